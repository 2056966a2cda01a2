"""Facts about the host a farm process runs on, without torch."""

from __future__ import annotations

import os


def host_memory() -> tuple[int, int]:
    """(total, available) host RAM in bytes, from /proc/meminfo where there is one."""
    try:
        fields = {}
        with open("/proc/meminfo") as handle:
            for line in handle:
                key, value = line.split(":", 1)
                fields[key] = int(value.split()[0]) * 1024
        return fields["MemTotal"], fields.get("MemAvailable", fields["MemFree"])
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, pages
