"""Result codes are stored in logs: the Python enum and the proto enum must agree."""

from __future__ import annotations

from ledger.results import Code
from proto.ledger.v1 import ledger_pb2


def test_every_code_matches_the_proto_enum_by_name_and_number() -> None:
    proto_codes = {
        name: number
        for name, number in ledger_pb2.ResultCode.items()
        if name != "RESULT_CODE_UNSPECIFIED"
    }
    assert {code.name: code.value for code in Code} == proto_codes
