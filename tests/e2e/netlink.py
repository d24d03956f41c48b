"""A link the tests can cut: a TCP forwarder between the services and a real server (Postgres), run in a thread
of its own. Cut, it stalls like a network that drops every packet: bytes already sent wait, new connections get no
answer, nothing is closed; restored, everything resumes where it stopped, as TCP resumes after a partition shorter
than its retransmission timeout.

Written here rather than taken from a library: toxiproxy, the usual tool, is a Go server that no package registry
this project installs from carries, and its Python clients only drive it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

CHUNK = 64 * 1024


class Link:
    """Forwards 127.0.0.1:`port` to `upstream` (a Unix socket path, or (host, port)) until `close()`."""

    def __init__(self, upstream: str | tuple[str, int]):
        self._upstream = upstream
        self._loop = asyncio.new_event_loop()
        self._open: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netlink", daemon=True)
        self._thread.start()
        self.port: int = self._run(self._start())

    def _run(self, coro) -> object:
        future: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(30)

    async def _start(self) -> int:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _connect(self):
        if isinstance(self._upstream, str):
            return await asyncio.open_unix_connection(self._upstream)
        return await asyncio.open_connection(*self._upstream)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._open.wait()  # a connection made while cut gets no answer until the link is back
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self._open.wait()  # cut: what was read waits here, and the sender's buffers fill up behind it
                writer.write(data)
                await writer.drain()
        finally:
            if writer.can_write_eof():
                try:
                    writer.write_eof()
                except OSError:
                    pass

    def cut(self) -> None:
        """Stops every byte in both directions, and leaves new connections unanswered."""
        self._loop.call_soon_threadsafe(self._open.clear)

    def restore(self) -> None:
        """Lets everything through again."""
        self._loop.call_soon_threadsafe(self._open.set)

    def close(self) -> None:
        """Stops listening, closes every connection and the thread."""
        async def stop() -> None:
            self._server.close()
            for w in list(self._writers):
                w.close()
        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
