"""The protocol: the messages parties exchange (:mod:`.tasks`, :mod:`.results`, :mod:`.linkage`),
their framing and mTLS gRPC transport (:mod:`.transport`, :mod:`.rpc`, :mod:`.blobs`, the protobuf
schema ``fedlink.proto``) and the wire audit tests read (:mod:`.audit`)."""
