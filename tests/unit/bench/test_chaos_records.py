"""The chaos readers count a decision (or action) per record, not per read: a reader whose group restarts from an
older committed offset reads the same records again, and that must not look like a second decision."""

from metacart.bench.chaos import Records


def test_the_same_record_read_again_is_a_reread_and_another_record_is_new():
    records = Records()
    assert records.first(0, 10) and records.first(1, 10) and records.first(0, 11)
    assert not records.first(0, 10)  # the reader's group went back: the same record
    assert not records.first(0, 10)
    assert records.rereads == 2
    assert records.first(0, 12)  # a second decision for a request is another record: counted by the caller
