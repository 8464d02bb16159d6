"""The local Apache Kafka broker, one job per module.

:mod:`.host` holds what they share (ports, processes, file locks, :class:`~.host.ServiceError`);
:mod:`.install` finds Java and Maven and copies the broker jars from Maven Central;
:mod:`.config` writes the broker's configuration and formats its KRaft log dir;
:mod:`.broker` runs the broker process (:class:`~.broker.KafkaBroker`). The stable import
path and the command line are :mod:`s3flow.local.kafka_broker`.
"""
