"""Fast local AWS endpoints on the JVM: ElasticMQ (SQS) and S3Proxy (S3), from Maven Central.

:mod:`.install` copies both servers' jars once (``scripts/aws/pom.xml``) into the
services cache; :mod:`.server` runs one server process (:class:`~.server.ElasticMQ`,
:class:`~.server.S3Proxy`) on 127.0.0.1; :mod:`.cli` is ``scripts/services
elasticmq|s3proxy ...``. Neither server sends S3 event notifications.
"""
