"""The ``csv-to-kafka`` pipeline: stream CSV objects into a Kafka topic, exactly once.

Modules, each with one job:

* :mod:`.options` - the validated ``[pipelines.options]`` table;
* :mod:`.errors` - librdkafka errors translated into the s3flow hierarchy;
* :mod:`.rows` - decompressed chunks -> line-aligned pieces -> CSV records -> messages;
* :mod:`.checkpoint` - the checkpoint record and reading the latest committed one;
* :mod:`.channel` - the bounded hand-over of chunks from the event loop to the producer thread;
* :mod:`.session` - one object's transactional producer and produce loop (synchronous);
* :mod:`.runner` - the asyncio side: open the object, feed the session, resume and retry.

The processor itself is :class:`s3flow.pipelines.csv_kafka.processor.CsvToKafkaProcessor`.
"""
