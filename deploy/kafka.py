"""Apache Kafka for the local stack: a single KRaft node run with the machine's JDK.

The jars come from Maven Central through ``deploy/pom.xml`` (``mvn
dependency:copy-dependencies``) into ``$RUNLOG_HOME/kafka/libs``; storage is formatted on the
first start; topics are created idempotently with retention off, because the log is the
source of truth that every read model is rebuilt from.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from events.settings import Settings

from . import process
from .process import StackError

NAME = "kafka"
MIN_JAVA = 17

LOG4J = """\
status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def kafka_dir(s: Settings) -> Path:
    return s.home / "kafka"


def server_properties(s: Settings) -> str:
    """Broker + controller on one node, tuned for a development box."""
    host, port, ctl = s.kafka_host, s.kafka_port, s.controller_port
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{ctl}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={kafka_dir(s) / "data"}
num.partitions={s.events_partitions}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
log.retention.bytes=-1
num.network.threads=2
num.io.threads=4
"""


def check_tools() -> None:
    """A JDK (17 or newer) and Maven must be on PATH; say so in one sentence if not."""
    if shutil.which("java") is None:
        raise StackError("Kafka needs a Java runtime (JDK 17 or newer) on PATH, and `java` was not found.")
    if shutil.which("mvn") is None:
        raise StackError("Kafka's jars are fetched with Maven, and `mvn` was not found on PATH.")
    out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise StackError(f"Kafka 4 needs Java {MIN_JAVA} or newer, and `java` here is Java {major}.")


def ensure_jars(s: Settings) -> Path:
    """Copy Kafka and its runtime dependencies into $RUNLOG_HOME/kafka/libs (once per pom)."""
    pom = resources.files("deploy").joinpath("pom.xml").read_bytes()
    digest = hashlib.sha256(pom).hexdigest()[:16]
    libs = kafka_dir(s) / "libs"
    stamp = libs / f".pom-{digest}"
    if stamp.exists():
        return libs
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    pom_path = kafka_dir(s) / "pom.xml"
    pom_path.write_bytes(pom)
    log = process.log_path(s.home, "maven")
    with log.open("ab") as out:
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={libs}"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        raise StackError(f"Maven could not fetch Kafka's jars (see {log}).")
    stamp.touch()
    return libs


def ensure_formatted(s: Settings, libs: Path) -> None:
    """Write the config and format KRaft storage on first start."""
    kdir = kafka_dir(s)
    (kdir / "server.properties").write_text(server_properties(s))
    (kdir / "log4j2.properties").write_text(LOG4J)
    if (kdir / "data" / "meta.properties").exists():
        return
    cluster_file = kdir / "cluster.id"
    if not cluster_file.exists() or cluster_file.read_text().startswith("-"):  # see _kafka_cluster_id
        cluster_file.write_text(_kafka_cluster_id())
    result = subprocess.run(
        ["java", *_java_opts(s, heap="256m"), "kafka.tools.StorageTool", "format",
         f"--cluster-id={cluster_file.read_text().strip()}", "-c", str(kdir / "server.properties")],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise StackError(f"Kafka storage could not be formatted: {result.stdout.strip()} {result.stderr.strip()}")


def _kafka_cluster_id() -> str:
    """Kafka cluster ids are 16 random bytes in URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid()``, never one that starts with "-": the storage tool's
    argument parser reads such an id as an option (1 start in 64 failed to format before).
    """
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _java_opts(s: Settings, heap: str) -> list[str]:
    kdir = kafka_dir(s)
    return [
        "-Xms128m", f"-Xmx{heap}",
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={kdir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={kdir / 'logs'}",
        "-cp", str(kdir / "libs" / "*"),
    ]


def marker(s: Settings) -> str:
    return str(kafka_dir(s) / "server.properties")


def start(s: Settings) -> bool:
    """Start the broker if it is not already ours and running; False when it already was."""
    if process.running(s.home, NAME):
        return False
    process.ensure_port_free(s.kafka_host, s.kafka_port, "Kafka", "RUNLOG_BOOTSTRAP_SERVERS")
    process.ensure_port_free(s.kafka_host, s.controller_port, "Kafka's controller", "RUNLOG_KAFKA_CONTROLLER_PORT")
    check_tools()
    libs = ensure_jars(s)
    ensure_formatted(s, libs)
    argv = ["java", *_java_opts(s, heap=s.kafka_heap), "kafka.Kafka", marker(s)]
    process.spawn(s.home, NAME, argv, marker=marker(s))
    return True


def wait_ready(s: Settings, timeout: float = 90.0) -> None:
    """Wait until the broker answers metadata requests, then create the topics."""
    log = process.log_path(s.home, NAME)
    ok = process.wait_until(
        lambda: process.port_open(s.kafka_host, s.kafka_port) or not process.running(s.home, NAME), timeout
    )
    if not ok or not process.running(s.home, NAME):
        raise StackError(f"Kafka did not come up on {s.bootstrap_servers}; last lines of {log}:\n{process.tail(log)}")
    asyncio.run(ensure_topics(s, timeout=timeout))


async def ensure_topics(s: Settings, timeout: float = 60.0) -> None:
    """Create the events and dead-letter topics if missing (idempotent), with no retention."""
    config = {"retention.ms": "-1", "retention.bytes": "-1"}
    topics = [
        NewTopic(s.events_topic, s.events_partitions, 1, topic_configs=config),
        NewTopic(s.dlq_topic, 1, 1, topic_configs=config),
    ]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers, request_timeout_ms=10000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in topics if t.name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise StackError(f"Kafka at {s.bootstrap_servers} did not accept topic creation: {exc!r}") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def stop(s: Settings) -> bool:
    return process.stop(s.home, NAME, timeout=30)
