"""Generated gRPC stubs for the subset of etcd's v3 API that conch uses.

rpc_pb2.py and rpc_pb2_grpc.py are generated from rpc.proto by `bash tools/genproto.sh`;
do not edit them by hand. Import them lazily (conch.client does), so that importing conch
does not load grpc.
"""
