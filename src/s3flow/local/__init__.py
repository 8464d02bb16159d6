"""Zero-setup tooling: the embedded AWS endpoint (moto server), the local Kafka broker, the demo.

:mod:`.endpoint` starts servers that never outlive their owner; :mod:`.moto_server`
is the patched moto server it runs; :mod:`.kafka_broker` installs and runs Kafka
from Maven Central (its parts are in :mod:`.kafka`); :mod:`.demo` is ``s3flow demo``.
"""
