"""``--forwarded-allow-ips``: which peers may say, with X-Forwarded-For and X-Forwarded-Proto, who
the client is and which scheme it used. Shared by the WSGI and the ASGI worker.

Why the rightmost untrusted hop: every trusted proxy appends the address it saw, so the hops a
client wrote itself are on the left; the first address from the right that is not a trusted proxy
is the last one a trusted proxy vouched for (gunicorn's and uvicorn's rule).
"""

from __future__ import annotations

import ipaddress
from typing import List, Optional


class Proxies:
    def __init__(self, allow: List[str]) -> None:
        self.trust_all = "*" in allow
        self.trusted_ips = {a for a in allow if "/" not in a}
        self.trusted_nets = [ipaddress.ip_network(a, strict=False) for a in allow if "/" in a]

    def trusted(self, addr: str) -> bool:
        if self.trust_all or addr in self.trusted_ips:
            return True
        if not self.trusted_nets or not addr:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_nets)

    def client(self, header: str) -> str:
        """The client behind trusted proxies, from an X-Forwarded-For header."""
        hops = [h.strip() for h in header.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusted(hop):
                return hop
        return hops[0] if hops else ""

    @staticmethod
    def scheme(header: str) -> Optional[str]:
        """``http`` or ``https`` from an X-Forwarded-Proto header; None for anything else."""
        scheme = header.split(",")[0].strip().lower()
        return scheme if scheme in ("http", "https") else None
