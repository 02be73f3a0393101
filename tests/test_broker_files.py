"""The embedded broker writes each message whole before a worker can take it: a worker listing
the queue folder in the middle of a write finds nothing, never an empty message."""
import os

from kombu import Connection

from factory.project import broker_files


def test_a_message_appears_only_once_written_and_a_worker_reads_it_whole(tmp_path, monkeypatch):
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path), "processed_folder": str(tmp_path / "done")}
    (tmp_path / "done").mkdir()
    seen_while_writing = []
    rename = os.replace

    def replace(source, target):
        # What a worker would list at the last moment before the message is in place.
        seen_while_writing.append([n for n in os.listdir(tmp_path) if n.partition(".")[2] == "celery.msg"])
        rename(source, target)

    monkeypatch.setattr(broker_files.os, "replace", replace)
    with Connection("filesystem://localhost/", transport="factory.project.broker_files:Transport", transport_options=options) as connection:
        channel = connection.default_channel
        assert isinstance(channel, broker_files.Channel)
        channel._put("celery", {"body": "x" * 100_000})
        assert seen_while_writing == [[]]
        assert channel._get("celery") == {"body": "x" * 100_000}
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
