"""The cluster file: the shipped files, the helpers, the round trip, and every validation rule."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from node.config import (
    ClusterConfig,
    ConfigError,
    NodeConfig,
    PortAllocator,
    dump_cluster_config,
    load_cluster_config,
    local_cluster_config,
    parse_cluster_config,
)

CLUSTER_CONFIGS = Path(__file__).resolve().parent.parent / "cluster-configs"
SECRET = "a-test-secret-of-32-characters.."
ADMIN_TOKEN = "an-admin-token-of-32-characters."

# A valid file; the validation tests each change one line of it.
VALID = f"""\
[cluster]
name = "test"
partitions = 4
replication_factor = 3
secret = "{SECRET}"
admin_token = "{ADMIN_TOKEN}"

[[nodes]]
id = "n1"
host = "127.0.0.1"
grpc_port = 7101
raft_port_base = 7200
metrics_port = 7301

[[nodes]]
id = "n2"
host = "127.0.0.1"
grpc_port = 7102
raft_port_base = 7210
metrics_port = 7302

[[nodes]]
id = "n3"
host = "127.0.0.1"
grpc_port = 7103
raft_port_base = 7220
"""


def edited(old: str, new: str, text: str = VALID) -> str:
    """`text` with its one occurrence of `old` replaced by `new`."""
    assert text.count(old) == 1, f"{old!r} must occur exactly once"
    return text.replace(old, new)


def placed(*replicas: list[str] | str) -> str:
    """VALID with explicit [[partitions]] tables: placed(["n1", ...], ...) gives ids 0, 1, ...;
    a string is appended verbatim, for tables that are wrong in other ways."""
    tables = []
    for partition, entry in enumerate(replicas):
        if isinstance(entry, str):
            tables.append(entry)
        else:
            listed = ", ".join(f'"{node_id}"' for node_id in entry)
            tables.append(f"[[partitions]]\nid = {partition}\nreplicas = [{listed}]\n")
    return VALID + "\n" + "\n".join(tables)


def rotated() -> list[list[str]]:
    """A valid explicit placement of VALID's 4 partitions."""
    return [["n1", "n2", "n3"], ["n2", "n3", "n1"], ["n3", "n1", "n2"], ["n1", "n2", "n3"]]


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_cluster_config(text, source="cluster.toml")
    return caught.value


def assert_names(error: ConfigError, field: str, *fragments: str) -> None:
    """The message names the file and the field (and says why, when fragments are given)."""
    message = str(error)
    assert message.startswith(f"cluster.toml: {field}: "), message
    assert error.field == field
    for fragment in fragments:
        assert fragment in message, message


def counting_allocator(start: int) -> tuple[list[int], PortAllocator]:
    """A port allocator handing out consecutive blocks from `start`, recording every port."""
    handed_out: list[int] = []
    counter = itertools.count(start)

    def allocate(count: int) -> int:
        block = [next(counter) for _ in range(count)]
        handed_out.extend(block)
        return block[0]

    return handed_out, allocate


def all_ports(config: ClusterConfig) -> list[tuple[str, int]]:
    ports = []
    for node in config.nodes:
        ports.append((node.host, node.grpc_port))
        if node.metrics_port is not None:
            ports.append((node.host, node.metrics_port))
        # The partitions' Raft ports, then the metadata group's.
        ports += [(node.host, node.raft_port_base + p) for p in range(config.partition_count + 1)]
    return ports


# --- the shipped files ---------------------------------------------------------------------


def test_local_3node_is_three_loopback_nodes_with_four_partitions_replicated_three_times() -> None:
    config = load_cluster_config(CLUSTER_CONFIGS / "local-3node.toml")
    assert [node.id for node in config.nodes] == ["n1", "n2", "n3"]
    assert {node.host for node in config.nodes} == {"127.0.0.1"}
    assert (config.partition_count, config.replication_factor) == (4, 3)
    assert all(7100 <= port <= 7400 for _, port in all_ports(config))


def test_local_3node_makes_every_node_the_preferred_leader_of_some_partition() -> None:
    config = load_cluster_config(CLUSTER_CONFIGS / "local-3node.toml")
    leaders = {replicas[0] for replicas in config.placement}
    assert leaders == {"n1", "n2", "n3"}


def test_local_5node_computes_a_placement_that_spreads_leaders_over_all_five_nodes() -> None:
    config = load_cluster_config(CLUSTER_CONFIGS / "local-5node.toml")
    assert (len(config.nodes), config.partition_count, config.replication_factor) == (5, 8, 3)
    led = Counter(replicas[0] for replicas in config.placement)
    assert set(led) == {node.id for node in config.nodes}
    assert max(led.values()) - min(led.values()) <= 1


def test_local_files_can_run_side_by_side() -> None:
    three = load_cluster_config(CLUSTER_CONFIGS / "local-3node.toml")
    five = load_cluster_config(CLUSTER_CONFIGS / "local-5node.toml")
    assert not set(all_ports(three)) & set(all_ports(five))


def test_multi_host_example_refuses_to_load_until_a_secret_is_filled_in() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.secret: .*secrets\.token_urlsafe"):
        load_cluster_config(CLUSTER_CONFIGS / "multi-host.example.toml")


def test_multi_host_example_is_valid_once_its_secrets_are_filled_in() -> None:
    text = (CLUSTER_CONFIGS / "multi-host.example.toml").read_text(encoding="utf-8")
    text = edited('secret = ""', f'secret = "{SECRET}"', text)
    text = edited('admin_token = ""', 'admin_token = "an-admin-token-of-32-characters."', text)
    text = edited('wallet_token = ""', 'wallet_token = "a-wallet-token-of-32-characters."', text)
    config = parse_cluster_config(text)
    assert len({node.host for node in config.nodes}) == len(config.nodes)
    assert config.insecure_dev_mode is False


@pytest.mark.parametrize("name", ["local-3node", "local-5node"])
def test_shipped_local_files_round_trip_through_dump(name: str) -> None:
    config = load_cluster_config(CLUSTER_CONFIGS / f"{name}.toml")
    assert parse_cluster_config(dump_cluster_config(config)) == config


# --- the helpers ---------------------------------------------------------------------------


def test_grpc_address_is_host_colon_port() -> None:
    assert NodeConfig("n1", "wallet-1.example.com", 7101, 7200).grpc_address == (
        "wallet-1.example.com:7101"
    )


def test_raft_address_of_partition_p_is_on_raft_port_base_plus_p() -> None:
    node = NodeConfig("n1", "127.0.0.1", 7101, 7200)
    assert node.raft_address(0) == "127.0.0.1:7200"
    assert node.raft_address(3) == "127.0.0.1:7203"


def test_node_finds_a_node_by_id() -> None:
    config = parse_cluster_config(VALID)
    assert config.node("n2").grpc_port == 7102


def test_node_raises_key_error_naming_the_unknown_id_and_the_known_ones() -> None:
    config = parse_cluster_config(VALID)
    with pytest.raises(KeyError, match=r"no node 'n9' in cluster 'test' \(its nodes: n1, n2, n3\)"):
        config.node("n9")


def test_replicas_of_lists_the_preferred_leader_first() -> None:
    config = parse_cluster_config(placed(*rotated()))
    assert config.replicas_of(1) == ("n2", "n3", "n1")


def test_replicas_of_rejects_a_partition_that_does_not_exist() -> None:
    config = parse_cluster_config(VALID)
    with pytest.raises(ValueError, match=r"partition 4 is out of range 0\.\.3"):
        config.replicas_of(4)


def test_partitions_of_lists_the_partitions_a_node_hosts() -> None:
    text = edited("replication_factor = 3", "replication_factor = 1")
    config = parse_cluster_config(text)
    assert config.partitions_of("n1") == (0, 3)
    assert config.partitions_of("n2") == (1,)


def test_partitions_of_an_unknown_node_is_an_error_not_an_empty_answer() -> None:
    config = parse_cluster_config(VALID)
    with pytest.raises(KeyError, match="no node 'n9'"):
        config.partitions_of("n9")


def test_node_by_raft_address_finds_the_node_listening_on_any_of_its_raft_ports() -> None:
    config = parse_cluster_config(VALID)
    assert config.node_by_raft_address("127.0.0.1:7210").id == "n2"
    assert config.node_by_raft_address("127.0.0.1:7223").id == "n3"


@pytest.mark.parametrize(
    "address", ["127.0.0.1:7204", "127.0.0.1:7101", "10.0.0.1:7200", "127.0.0.1", "nonsense"]
)
def test_node_by_raft_address_raises_key_error_for_an_address_no_node_listens_on(
    address: str,
) -> None:
    config = parse_cluster_config(VALID)
    with pytest.raises(KeyError, match="has Raft address"):
        config.node_by_raft_address(address)


def test_the_secret_is_kept_out_of_the_repr() -> None:
    assert SECRET not in repr(parse_cluster_config(VALID))


def test_raft_password_is_none_only_for_an_empty_secret() -> None:
    insecure = edited(f'secret = "{SECRET}"', "insecure_dev_mode = true")
    assert parse_cluster_config(insecure).raft_password is None
    assert parse_cluster_config(VALID).raft_password == SECRET


# --- default placement ---------------------------------------------------------------------


def test_without_partitions_tables_partition_p_starts_at_node_p_modulo_node_count() -> None:
    config = parse_cluster_config(VALID)
    assert config.placement == (
        ("n1", "n2", "n3"),
        ("n2", "n3", "n1"),
        ("n3", "n1", "n2"),
        ("n1", "n2", "n3"),
    )


def test_computed_placement_uses_distinct_nodes_and_spreads_leaders_evenly() -> None:
    config = local_cluster_config("spread", 7, 30, counting_allocator(20000)[1])
    assert all(len(set(replicas)) == 3 for replicas in config.placement)
    led = Counter(replicas[0] for replicas in config.placement)
    assert len(led) == 7
    assert max(led.values()) - min(led.values()) <= 1


# --- round trip ----------------------------------------------------------------------------


def test_dump_then_parse_gives_back_an_equal_config() -> None:
    config = parse_cluster_config(placed(*rotated()))
    assert parse_cluster_config(dump_cluster_config(config)) == config


def test_dump_escapes_quotes_backslashes_control_and_unicode_characters_in_strings() -> None:
    secret = 'quote " backslash \\ tab \t newline \n del \x7f bell \x07 euro € emoji 🙂'
    config = local_cluster_config("odd", 3, 2, list(range(9000, 9015)), secret=secret)
    assert parse_cluster_config(dump_cluster_config(config)).secret == secret


def test_dump_of_an_insecure_config_without_secret_parses_back() -> None:
    config = parse_cluster_config(edited(f'secret = "{SECRET}"', "insecure_dev_mode = true"))
    assert parse_cluster_config(dump_cluster_config(config)) == config


def test_dump_omits_an_absent_metrics_port() -> None:
    config = parse_cluster_config(VALID)
    assert config.node("n3").metrics_port is None
    assert parse_cluster_config(dump_cluster_config(config)).node("n3").metrics_port is None


# --- reading files -------------------------------------------------------------------------


def test_load_names_the_file_in_validation_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(edited("grpc_port = 7102", "grpc_port = 0"), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: nodes\[1\]\.grpc_port: "):
        load_cluster_config(path)


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=rf"^{path}: cannot read"):
        load_cluster_config(path)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(VALID.replace('"test"', '"t\xe9st"').encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_cluster_config(path)


# --- validation: syntax and structure ------------------------------------------------------


def test_a_toml_syntax_error_names_the_file_and_the_line() -> None:
    error = error_of(edited("grpc_port = 7102", "grpc_port 7102"))
    assert str(error).startswith("cluster.toml: invalid TOML: ")
    assert "line 18" in str(error)
    assert error.line == 18


def test_a_missing_cluster_table_is_named() -> None:
    text = VALID[VALID.index("[[nodes]]") :]
    assert_names(error_of(text), "cluster", "missing required table")


def test_nodes_must_be_an_array_of_tables() -> None:
    text = VALID.split("[[nodes]]")[0] + '[nodes]\nid = "n1"\n'
    assert_names(error_of(text), "nodes", "expected an array of tables ([[nodes]])")


def test_a_cluster_needs_at_least_one_node() -> None:
    cluster = VALID[: VALID.index("[[nodes]]")]
    text = "nodes = []\n" + edited("replication_factor = 3", "replication_factor = 1", cluster)
    assert_names(error_of(text), "nodes", "at least one")


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('name = "test"\n', "cluster.name"),
        ("partitions = 4\n", "cluster.partitions"),
        ("replication_factor = 3\n", "cluster.replication_factor"),
        ('id = "n2"\n', "nodes[1].id"),
        ('host = "127.0.0.1"\ngrpc_port = 7102\n', "nodes[1].host"),
        ("grpc_port = 7102\n", "nodes[1].grpc_port"),
        ("raft_port_base = 7210\n", "nodes[1].raft_port_base"),
    ],
)
def test_a_missing_required_key_is_named(line: str, field: str) -> None:
    without = edited(line, "grpc_port = 7102\n" if line.startswith("host") else "")
    assert_names(error_of(without), field, "missing required key")


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("partitions = 4", 'partitions = "4"', "cluster.partitions"),
        ("partitions = 4", "partitions = 4.0", "cluster.partitions"),
        ('name = "test"', "name = 1", "cluster.name"),
        ('id = "n2"', "id = 2", "nodes[1].id"),
        ("metrics_port = 7302", 'metrics_port = "7302"', "nodes[1].metrics_port"),
        (f'secret = "{SECRET}"', f'secret = ["{SECRET}"]', "cluster.secret"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(old: str, new: str, field: str) -> None:
    assert_names(error_of(edited(old, new)), field, "expected")


@pytest.mark.parametrize(
    "line", ["grpc_port = 7102", "raft_port_base = 7210", "metrics_port = 7302"]
)
def test_a_boolean_is_not_accepted_as_a_port(line: str) -> None:
    key = line.split(" = ")[0]
    error = error_of(edited(line, f"{key} = true"))
    assert_names(error, f"nodes[1].{key}", "expected an integer, got a boolean (true)")


def test_a_boolean_is_not_accepted_as_a_count() -> None:
    error = error_of(edited("partitions = 4", "partitions = true"))
    assert_names(error, "cluster.partitions", "got a boolean")


def test_insecure_dev_mode_must_be_a_boolean() -> None:
    error = error_of(edited("partitions = 4", "partitions = 4\ninsecure_dev_mode = 1"))
    assert_names(error, "cluster.insecure_dev_mode", "expected true or false")


# --- validation: unknown keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field", "suggestion"),
    [
        (
            "replication_factor = 3",
            "replication_factr = 3",
            "cluster.replication_factr",
            "replication_factor",
        ),
        ("grpc_port = 7102", "grpc_prot = 7102", "nodes[1].grpc_prot", "grpc_port"),
        ("[cluster]", "clusters = 1\n[cluster]", "clusters", "cluster"),
    ],
)
def test_an_unknown_key_is_named_with_a_suggestion(
    old: str, new: str, field: str, suggestion: str
) -> None:
    error = error_of(edited(old, new))
    assert_names(error, field, "unknown key", f"did you mean {suggestion!r}?")


def test_an_unknown_key_in_a_partition_table_is_named() -> None:
    table = '[[partitions]]\nid = 0\nreplicas = ["n1", "n2", "n3"]\nleader = "n1"\n'
    assert_names(error_of(placed(table)), "partitions[0].leader", "unknown key 'leader'")


# --- validation: cluster -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "-leading-dash", ".hidden", "has space", "a/b"])
def test_a_cluster_name_must_be_a_plain_word(name: str) -> None:
    assert_names(error_of(edited('name = "test"', f'name = "{name}"')), "cluster.name")


@pytest.mark.parametrize("count", [0, -1, 4097])
def test_partitions_must_be_between_1_and_4096(count: int) -> None:
    error = error_of(edited("partitions = 4", f"partitions = {count}"))
    assert_names(error, "cluster.partitions", "out of range 1..4096")


def test_4096_partitions_are_accepted() -> None:
    config = local_cluster_config("big", 3, 4096, counting_allocator(10000)[1])
    assert config.partition_count == 4096


def test_replication_factor_must_be_at_least_1() -> None:
    error = error_of(edited("replication_factor = 3", "replication_factor = 0"))
    assert_names(error, "cluster.replication_factor", "out of range")


def test_replication_factor_must_not_exceed_the_number_of_nodes() -> None:
    error = error_of(edited("replication_factor = 3", "replication_factor = 4"))
    assert_names(error, "cluster.replication_factor", "more than the 3 nodes")


# --- validation: secret --------------------------------------------------------------------


def test_a_missing_secret_is_rejected_with_how_to_generate_one() -> None:
    error = error_of(edited(f'secret = "{SECRET}"\n', ""))
    assert_names(error, "cluster.secret", "missing", "secrets.token_urlsafe(32)")


def test_a_secret_shorter_than_16_characters_is_rejected_without_echoing_it() -> None:
    error = error_of(edited(f'secret = "{SECRET}"', 'secret = "fifteen-chars!!"'))
    assert_names(error, "cluster.secret", "15 characters, at least 16")
    assert "fifteen" not in str(error)


def test_a_secret_of_16_characters_is_accepted() -> None:
    config = parse_cluster_config(edited(f'secret = "{SECRET}"', 'secret = "sixteen-chars!!!"'))
    assert len(config.secret) == 16


def test_insecure_dev_mode_allows_a_missing_secret() -> None:
    config = parse_cluster_config(edited(f'secret = "{SECRET}"', "insecure_dev_mode = true"))
    assert config.insecure_dev_mode is True
    assert config.secret == ""


def test_insecure_dev_mode_allows_an_empty_secret() -> None:
    text = edited(f'secret = "{SECRET}"', 'secret = ""\ninsecure_dev_mode = true')
    assert parse_cluster_config(text).secret == ""


def test_insecure_dev_mode_false_still_requires_the_secret() -> None:
    error = error_of(edited(f'secret = "{SECRET}"', "insecure_dev_mode = false"))
    assert_names(error, "cluster.secret", "missing")


# --- validation: nodes ---------------------------------------------------------------------


def test_node_ids_must_be_unique() -> None:
    error = error_of(edited('id = "n2"', 'id = "n1"'))
    assert_names(error, "nodes[1].id", "duplicate node id 'n1'", "nodes[0].id")


@pytest.mark.parametrize("node_id", ["", "N2", "n_2", "n 2", "n2.", "x" * 33])
def test_a_node_id_must_be_1_to_32_of_lowercase_letters_digits_and_dashes(node_id: str) -> None:
    error = error_of(edited('id = "n2"', f'id = "{node_id}"'))
    assert_names(error, "nodes[1].id", "not a valid node id")


def test_a_node_id_of_32_characters_is_accepted() -> None:
    config = parse_cluster_config(edited('id = "n2"', f'id = "{"x-9" * 10}ab"'))
    assert len(config.nodes[1].id) == 32


@pytest.mark.parametrize("host", ["", "::1", "host name", "http://x"])
def test_a_host_must_be_a_host_name_or_ipv4_address(host: str) -> None:
    text = edited('host = "127.0.0.1"\ngrpc_port = 7102', f'host = "{host}"\ngrpc_port = 7102')
    assert_names(error_of(text), "nodes[1].host")


@pytest.mark.parametrize(
    ("old", "port", "field"),
    [
        ("grpc_port = 7102", 0, "nodes[1].grpc_port"),
        ("grpc_port = 7102", 65536, "nodes[1].grpc_port"),
        ("raft_port_base = 7210", 0, "nodes[1].raft_port_base"),
        ("metrics_port = 7302", -1, "nodes[1].metrics_port"),
        ("metrics_port = 7302", 65536, "nodes[1].metrics_port"),
    ],
)
def test_a_port_must_be_between_1_and_65535(old: str, port: int, field: str) -> None:
    key = old.split(" = ")[0]
    assert_names(error_of(edited(old, f"{key} = {port}")), field, "out of range 1..65535")


def test_every_raft_port_must_be_at_most_65535() -> None:
    error = error_of(edited("raft_port_base = 7210", "raft_port_base = 65533"))
    assert_names(error, "nodes[1].raft_port_base",
                 "the metadata group would listen on port 65537")


# --- validation: ports on one host ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "port", "already_used_by"),
    [
        ("grpc_port = 7102", 7101, "nodes[0].grpc_port (gRPC)"),
        ("grpc_port = 7102", 7203, "nodes[0].raft_port_base (Raft of partition 3)"),
        ("metrics_port = 7302", 7101, "nodes[0].grpc_port (gRPC)"),
        ("metrics_port = 7302", 7102, "nodes[1].grpc_port (gRPC)"),
        ("raft_port_base = 7210", 7202, "nodes[0].raft_port_base (Raft of partition 2)"),
        ("raft_port_base = 7210", 7300, "nodes[0].metrics_port (metrics)"),
        ("raft_port_base = 7210", 7102, "nodes[1].grpc_port (gRPC)"),
    ],
)
def test_no_two_listeners_share_a_port_on_one_host(
    line: str, port: int, already_used_by: str
) -> None:
    key = line.split(" = ")[0]
    error = error_of(edited(line, f"{key} = {port}"))
    assert_names(
        error, f"nodes[1].{key}", "on host 127.0.0.1 is already used by " + already_used_by
    )


def test_nodes_on_different_hosts_may_use_the_same_ports() -> None:
    text = VALID.replace(
        'host = "127.0.0.1"\ngrpc_port = 7102\nraft_port_base = 7210',
        'host = "127.0.0.2"\ngrpc_port = 7101\nraft_port_base = 7200',
    )
    config = parse_cluster_config(text)
    assert config.nodes[1].grpc_address == "127.0.0.2:7101"


# --- validation: explicit placement --------------------------------------------------------


def test_an_explicit_placement_is_used_as_written() -> None:
    swapped = [["n3", "n2", "n1"], *rotated()[1:]]
    assert parse_cluster_config(placed(*swapped)).replicas_of(0) == ("n3", "n2", "n1")


def test_an_explicit_placement_must_place_every_partition() -> None:
    error = error_of(placed(*rotated()[:3]))
    assert_names(error, "partitions", "partition 3 not placed", "every partition 0..3")


def test_an_explicit_placement_must_place_each_partition_only_once() -> None:
    again = '[[partitions]]\nid = 1\nreplicas = ["n1", "n2", "n3"]\n'
    error = error_of(placed(*rotated(), again))
    assert_names(error, "partitions[4].id", "partition 1 is already placed by partitions[1]")


def test_an_explicit_placement_names_partitions_that_do_not_exist() -> None:
    extra = '[[partitions]]\nid = 4\nreplicas = ["n1", "n2", "n3"]\n'
    assert_names(error_of(placed(*rotated(), extra)), "partitions[4].id", "out of range 0..3")


def test_an_explicit_placement_names_unknown_replicas() -> None:
    error = error_of(placed(["n1", "n2", "n9"], *rotated()[1:]))
    assert_names(error, "partitions[0].replicas[2]", "unknown node 'n9'")


def test_an_explicit_placement_rejects_a_node_listed_twice_for_one_partition() -> None:
    error = error_of(placed(["n1", "n2", "n1"], *rotated()[1:]))
    assert_names(error, "partitions[0].replicas[2]", "node 'n1' is listed twice")


@pytest.mark.parametrize("replicas", [["n1", "n2"], []])
def test_an_explicit_placement_lists_exactly_replication_factor_replicas(
    replicas: list[str],
) -> None:
    error = error_of(placed(*rotated()[:2], replicas, rotated()[3]))
    assert_names(error, "partitions[2].replicas", "requires exactly 3")


# --- local clusters ------------------------------------------------------------------------


def test_local_cluster_config_is_valid_and_on_loopback() -> None:
    config = local_cluster_config("dev", 3, 4, list(range(30000, 30021)))
    assert parse_cluster_config(dump_cluster_config(config)) == config
    assert [node.id for node in config.nodes] == ["n1", "n2", "n3"]
    assert {node.host for node in config.nodes} == {"127.0.0.1"}


def test_local_cluster_config_uses_each_port_once_and_only_the_ports_given() -> None:
    given = list(range(30000, 30000 + 5 * (8 + 3)))
    config = local_cluster_config("dev", 5, 8, given)
    used = [port for _, port in all_ports(config)]
    assert len(used) == len(set(used))
    assert sorted(used) == given


def test_local_cluster_config_takes_a_port_allocator() -> None:
    handed_out, allocate = counting_allocator(40000)
    config = local_cluster_config("dev", 3, 4, allocate)
    assert sorted(port for _, port in all_ports(config)) == sorted(handed_out)


def test_local_cluster_config_rejects_too_few_ports() -> None:
    with pytest.raises(ValueError, match="20 ports given; 3 nodes with 4 partitions need 21"):
        local_cluster_config("dev", 3, 4, list(range(30000, 30020)))


def test_local_cluster_config_needs_consecutive_ports_for_a_nodes_raft_groups() -> None:
    with pytest.raises(ValueError, match="must be consecutive"):
        local_cluster_config("dev", 3, 4, list(range(30000, 30042, 2)))


def test_local_cluster_config_generates_a_fresh_secret_by_default() -> None:
    first = local_cluster_config("dev", 3, 4, list(range(30000, 30021)))
    second = local_cluster_config("dev", 3, 4, list(range(30000, 30021)))
    assert len(first.secret) >= 16
    assert first.secret != second.secret


def test_local_cluster_config_validates_like_a_file() -> None:
    with pytest.raises(
        ConfigError, match=r"cluster\.replication_factor: 3 is more than the 2 nodes"
    ):
        local_cluster_config("dev", 2, 4, list(range(30000, 30014)))


# --- the runbook's node replacement (docs/operations.md), applied to local-3node.toml -------

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
NEW_NODE_TABLE = """
[[nodes]]
id = "n4"
host = "127.0.0.1"
grpc_port = 7104
raft_port_base = 7230
metrics_port = 7304
"""


def without_tables(text: str, name: str, node_id: str | None = None) -> str:
    """`text` without its `[[name]]` tables (only the one with `id = "node_id"` if given)."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            blocks.append([])
        blocks[-1].append(line)

    def dropped(block: list[str]) -> bool:
        if not block or block[0].strip() != f"[[{name}]]":
            return False
        return node_id is None or f'id = "{node_id}"\n' in block

    return "".join("".join(block) for block in blocks if not dropped(block))


def runbook_section(title: str) -> str:
    text = RUNBOOK.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    return text[start:text.index("\n## ", start + 1)]


def test_the_runbooks_node_replacement_gives_a_file_the_nodes_accept() -> None:
    section = runbook_section("Replacing a node")
    assert "delete\n   `eu-3`'s `[[nodes]]` table, and delete every `[[partitions]]` table" in (
        section)
    # Step 3: the replacement's [[nodes]] table is added ("Adding a node", step 1).
    text = (CLUSTER_CONFIGS / "local-3node.toml").read_text(encoding="utf-8") + NEW_NODE_TABLE
    parse_cluster_config(text)
    # Step 4: the dead node's [[nodes]] table and every [[partitions]] table are deleted.
    text = without_tables(without_tables(text, "nodes", "n3"), "partitions")

    config = parse_cluster_config(text, "cluster.toml")

    assert [node.id for node in config.nodes] == ["n1", "n2", "n4"]
    assert "n3" not in {node_id for replicas in config.placement for node_id in replicas}


def test_deleting_only_the_dead_nodes_table_is_refused_naming_the_field_and_the_node() -> None:
    text = (CLUSTER_CONFIGS / "local-3node.toml").read_text(encoding="utf-8") + NEW_NODE_TABLE
    text = without_tables(text, "nodes", "n3")

    with pytest.raises(ConfigError) as caught:
        parse_cluster_config(text, "cluster.toml")

    assert str(caught.value) == (
        "cluster.toml: partitions[0].replicas[2]: unknown node 'n3' (nodes: n1, n2, n4)")


def test_the_runbooks_node_removal_gives_a_file_the_nodes_accept() -> None:
    section = runbook_section("Draining and removing a node")
    assert "delete its `[[nodes]]`\ntable and every `[[partitions]]` table" in section
    assert "lower `replication_factor`" in section
    text = (CLUSTER_CONFIGS / "local-3node.toml").read_text(encoding="utf-8")
    text = without_tables(without_tables(text, "nodes", "n3"), "partitions")
    with pytest.raises(ConfigError, match="replication_factor: 3 is more than the 2 nodes"):
        parse_cluster_config(text)

    config = parse_cluster_config(edited("replication_factor = 3", "replication_factor = 2",
                                         text))

    assert [node.id for node in config.nodes] == ["n1", "n2"]
