"""Redis Cluster without a cluster: every script's keys share one hash slot, cluster errors are told apart
from bugs, and `redis.cluster` is validated. (Against a real 3-master cluster:
tests/integration/test_redis_cluster.py and the tests parametrized over ``redis_target``.)"""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from stream_monitor.app import cluster_unavailable, write_refusal
from stream_monitor.config import parse_config
from stream_monitor.errors import ConfigError
from stream_monitor.join import RedisJoin
from stream_monitor.state import ReferenceStore, StateStore


class NoClient:
    """Stands in for a client: the stores only register their scripts when built."""

    def register_script(self, script):
        return script


def slots(keys) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


@pytest.mark.parametrize("topic, partition", [("ml.inference", 0), ("ml.inference", 7), ("t|x", 3)])
def test_a_partitions_state_key_is_its_own_slot_and_the_save_script_gets_only_it(topic, partition):
    store = StateStore(NoClient(), "sm", "group-1")
    key = store.key(topic, partition)
    assert key == f"sm:{{group-1|{topic}|{partition}}}:state"
    assert key_slot(key.encode()) == key_slot(f"group-1|{topic}|{partition}".encode())
    assert slots([store.index_key]) == slots(["group-1"]), "the index of a group: one key, one slot"


def test_the_partitions_of_a_group_spread_over_many_slots():
    store = StateStore(NoClient(), "sm", "g")
    assert len(slots(store.key("ml.inference", p) for p in range(16))) == 16


@pytest.mark.parametrize("model, event_id", [("fraud", "e1"), ("credit", "7f3c-{odd}-id"), ("m", "")])
def test_every_key_a_join_step_passes_shares_the_models_slot(model, event_id):
    joiner = RedisJoin(NoClient(), "sm", {})
    keys = joiner._keys(model)
    assert len(keys) == 9 and slots(keys) == slots([model]), "a step names every key it touches"
    # moving a model's entries of the former layout: its sorted sets, and the entries' keys derived from the
    # model's prefix + ':p:' / ':l:' + id
    assert slots(joiner._former_keys(model)) == slots([model])
    assert slots(f"{joiner._base(model)}{kind}{other}" for kind in (":p:", ":l:") for other in (event_id, "{b}"))\
        == slots([model])


def test_a_stored_reference_is_one_key_under_the_models_tag():
    assert ReferenceStore(NoClient(), "sm").key("fraud") == "sm:reference:{fraud}"
    assert slots([ReferenceStore(NoClient(), "sm").key("fraud")]) == slots(["fraud"])


PIPELINE = "Command # 3 (EVALSHA abc 7 sm:join:{m}:pending) of pipeline caused error: "


@pytest.mark.parametrize("error, says", [
    (redis.exceptions.ClusterDownError("The cluster is down"), "the cluster is down"),
    (redis.exceptions.ResponseError(PIPELINE + "CLUSTERDOWN The cluster is down"), "the cluster is down"),
    (redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"), "the cluster is down"),
    (redis.exceptions.ResponseError("Script attempted to execute a command while the cluster is down"),
     "the cluster is down"),
    (redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"), "TRYAGAIN"),
    (redis.exceptions.ResponseError("Script attempted to access a non local key in a cluster node script"),
     "being moved under a script"),
    (redis.exceptions.MovedError("3999 127.0.0.1:6381"), "redirected"),
    (redis.exceptions.AskError("3999 127.0.0.1:6381"), "redirected"),
    (redis.exceptions.SlotNotCoveredError("Command # 1 has no slot"), "no reachable node"),
    (redis.exceptions.ClusterError("TTL exhausted."), "did not answer"),
    (RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node"),
     "no node of the cluster"),
])
def test_cluster_errors_that_pass_are_told_apart(error, says):
    assert says in cluster_unavailable(error)
    assert write_refusal(error) is None


@pytest.mark.parametrize("error", [
    redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    redis.exceptions.ResponseError("ERR Error running script: user_script:3: bad argument"),
    redis.exceptions.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"),
    RedisClusterException("Argument 'db' is not possible to use in cluster mode"),
])
def test_a_bug_is_not_taken_for_an_unavailable_cluster(error):
    assert cluster_unavailable(error) is None


def test_a_refusal_inside_a_pipeline_is_still_a_refusal():
    assert "MISCONF" in write_refusal(redis.exceptions.ResponseError(PIPELINE + "MISCONF Redis is configured"))
    assert "read-only" in write_refusal(redis.exceptions.ResponseError(PIPELINE + "READONLY You can't write"))


def test_redis_cluster_is_a_boolean_off_by_default_and_needs_a_tcp_url_of_database_0():
    assert parse_config({}).redis.cluster is False
    assert parse_config({"redis": {"cluster": True, "url": "redis://node-1:7000"}}).redis.cluster is True
    assert parse_config({"redis": {"cluster": True, "url": "rediss://u:pw@node-1:7000/0"}}).redis.cluster is True
    assert parse_config({}, {"STREAM_MONITOR_REDIS_CLUSTER": "true"}).redis.cluster is True
    for raw, problem in (({"cluster": "yes"}, "must be bool"),
                         ({"cluster": True, "url": "unix:///run/redis.sock"}, "over TCP"),
                         ({"cluster": True, "url": "redis://app:s3cret@node-1:7000/2"}, "database 2")):
        with pytest.raises(ConfigError) as caught:
            parse_config({"redis": raw})
        assert caught.value.key == "redis.cluster" and problem in str(caught.value)
        assert "s3cret" not in str(caught.value)
    with pytest.raises(ConfigError, match="hash tag") as caught:  # {} is no hash tag: the join's keys would scatter
        parse_config({"redis": {"cluster": True}, "models": {"": {}}})
    assert caught.value.key == 'models.""'
