from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("call_id", "kind", "data", "last")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    kind: str
    data: bytes
    last: bool
    def __init__(self, call_id: _Optional[str] = ..., kind: _Optional[str] = ..., data: _Optional[bytes] = ..., last: bool = ...) -> None: ...
