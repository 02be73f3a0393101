"""The embedded Celery broker (`make demo`, a bare machine): kombu's filesystem transport, with
each message written whole before a worker can see it.

kombu writes a message straight under its final name, and a worker listing the folder meanwhile
can move it away and read it before its bytes are in: the empty read ends the worker
("Unrecoverable error: JSONDecodeError") and the message is lost. Here a message is written under
a name workers skip and renamed into place in one step (a rename within a folder is atomic).
"""
import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        # The name kombu gives a message (its order and its queue), unchanged.
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # Workers take only names whose part after the first dot is "<queue>.msg".
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as out:
                out.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
