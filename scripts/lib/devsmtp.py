#!/usr/bin/env python3
"""A development SMTP server that keeps what it receives: every message
accepted on 127.0.0.1:PORT is written, as received, to DIR/<n>.eml (the
envelope's recipients first, as X-Rcpt-To headers). Tests and the
walk-through read the real messages from there. aiosmtpd from PyPI.

    python3 scripts/lib/devsmtp.py PORT DIR
"""
import itertools
import os
import signal
import sys

from aiosmtpd.controller import Controller


class Keep:
    def __init__(self, folder):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        start = len(os.listdir(folder))
        self.numbers = itertools.count(start + 1)

    async def handle_DATA(self, server, session, envelope):
        n = next(self.numbers)
        head = "".join(f"X-Rcpt-To: {r}\r\n" for r in envelope.rcpt_tos)
        body = envelope.original_content or envelope.content
        tmp = os.path.join(self.folder, f".{n}.tmp")
        with open(tmp, "wb") as f:
            f.write(head.encode() + body)
        # Whole or not at all: a reader never sees half a message.
        os.replace(tmp, os.path.join(self.folder, f"{n}.eml"))
        return "250 Message accepted for delivery"


def main():
    port, folder = int(sys.argv[1]), sys.argv[2]
    controller = Controller(Keep(folder), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"devsmtp on 127.0.0.1:{port}, keeping mail in {folder}", flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
