"""A ``source`` whose file name has a ``*`` (releases with dated names, like OmniOS bloody's
``omnios-bloody-YYYYMMDD.cloud.raw.zst``): the newest match among the links of the directory's
index page (a web server's autoindex), newest meaning last in name order."""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import unquote, urljoin, urlsplit

from solstice.errors import DownloadError
from solstice.images.download import Downloader

_HREF = re.compile(r"""href\s*=\s*["']([^"'#?]+)["']""", re.IGNORECASE)


def is_pattern(source: str) -> bool:
    return source.startswith(("https://", "http://")) and "*" in source.rsplit("/", 1)[-1]


def newest(downloader: Downloader, source: str) -> str:
    directory, _, pattern = source.rpartition("/")
    index = directory + "/"
    names = set()
    for href in _HREF.findall(downloader.text(index)):
        url = urljoin(index, href)
        if url.rsplit("/", 1)[0] + "/" == index:
            name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
            if fnmatch.fnmatchcase(name, pattern):
                names.add(name)
    if not names:
        raise DownloadError(
            f"{index}: no file matches {pattern}",
            hint="check the entry's source, or name the file instead of a pattern",
        )
    return f"{index}{max(names)}"
