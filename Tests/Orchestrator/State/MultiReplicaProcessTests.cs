using System.Diagnostics;
using Grpc.Core;
using Grpc.Net.Client;
using Npgsql;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Tests.Orchestrator.Infrastructure;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// Issue 5's acceptance with real <c>rbs-orchestrator</c> processes (local mode: process backend, implicit
/// user "local") sharing one fresh PostgreSQL database: exactly one agent under concurrency across
/// replicas, recovery after a replica is SIGKILLed mid-allocation (its orphan agent is stopped by another
/// replica), one reaper at a time, and the store's start-up failure as the user sees it. Each replica has
/// its own state directory (agent ready files and logs); agents are found through /proc, scoped to the
/// test's temp directory, so an orphan nobody recorded is counted too.
/// </summary>
public sealed class MultiReplicaProcessTests(PostgresServerFixture postgres, ITestOutputHelper output)
    : IClassFixture<PostgresServerFixture>, IAsyncLifetime
{
    private const string Repo = "repo-multi";

    private readonly string _root = Directory.CreateTempSubdirectory("rbs-replicas-").FullName;
    private readonly List<OrchestratorReplicaProcess> _replicas = [];

    private static string RealAgent => Path.Combine(AppContext.BaseDirectory, "rbs-agent");

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var replica in _replicas)
        {
            await replica.DisposeAsync();
        }

        OrchestratorReplicaProcess.KillAgents(_root);
        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (IOException)
        {
            // A late write from a dying process; the temp dir is harmless.
        }
    }

    [Fact]
    public async Task ThreeReplicas_HundredConcurrentGetServers_OneAgentProcessOneRowSameIdForEveryCaller()
    {
        var (_, connectionString) = await postgres.CreateDatabaseAsync();
        var workspace = CreateWorkspace();
        var replicas = await Task.WhenAll(
            StartReplicaAsync("r1", connectionString, TestAgents.Fake),
            StartReplicaAsync("r2", connectionString, TestAgents.Fake),
            StartReplicaAsync("r3", connectionString, TestAgents.Fake));

        var responses = await Task.WhenAll(Enumerable.Range(0, 100).Select(i =>
            Task.Run(() => replicas[i % replicas.Length].GetServerAsync(Repo, workspace, TimeSpan.FromSeconds(60)))))
            .WaitAsync(TimeSpan.FromSeconds(60));

        var agentId = Assert.Single(responses.Select(r => r.AgentId).Distinct());
        output.WriteLine($"every caller got {agentId}; cold: {responses.Count(r => !r.Warm)}");
        Assert.Equal(1, responses.Count(r => !r.Warm));
        var row = Assert.Single(await ReadRowsAsync(connectionString));
        Assert.Equal((agentId, "Ready"), (row.AgentId, row.State));
        var process = Assert.Single(OrchestratorReplicaProcess.AgentProcesses(_root));
        Assert.Equal(agentId, process.AgentId);
        Assert.Equal(row.BackendRef, process.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
        // Spawned once, not spawned thrice and two stopped again: each spawn leaves a log file.
        Assert.Single(replicas.SelectMany(r => AgentLogs(r.Name)));
    }

    [Fact]
    public async Task ReplicaKilledMidAllocation_AnotherReplicaWaitsOutTheLease_StopsTheOrphan_AndStartsAWorkingAgent()
    {
        var (_, connectionString) = await postgres.CreateDatabaseAsync();
        var workspace = CreateWorkspace();
        // A's agent never becomes ready, so A is allocating for as long as we like; its short start timeout and
        // lease margin make its allocation lease short (start timeout + margin: 3 s).
        // No reaper passes during the test: B's GetServer, not its reaper, is what must clean up.
        var startA = StartReplicaAsync("A", connectionString, TestAgents.Hanging, "--agent-start-timeout", "00:00:02",
            "--allocation-lease-margin", "00:00:01", "--reap-interval", "00:10:00");
        var startB = StartReplicaAsync("B", connectionString, RealAgent, "--build-tool", "/bin/true", "--reap-interval", "00:10:00");
        var a = await startA;
        var b = await startB;

        var callOnA = a.GetServerAsync(Repo, workspace, TimeSpan.FromSeconds(60));
        var (orphanId, leaseOwner) = await TestWait.EventuallyAsync(async () =>
        {
            var rows = await ReadRowsAsync(connectionString);
            return rows is [{ State: "Allocating" } row] ? (row.AgentId, row.LeaseOwner ?? "") : default;
        }, "A's allocating row");
        Assert.Contains($"/{a.Pid}/", leaseOwner, StringComparison.Ordinal);
        var orphanPid = await TestWait.EventuallyAsync(
            () => Task.FromResult(OrchestratorReplicaProcess.AgentProcesses(_root).FirstOrDefault(p => p.AgentId == orphanId).Pid),
            "A's agent process");

        await a.KillAsync();
        var callError = await Assert.ThrowsAsync<RpcException>(() => callOnA);
        output.WriteLine($"the call on A ended with {callError.StatusCode}: {callError.Status.Detail}");
        Assert.True(UnixProcesses.IsAgentProcess(orphanPid, orphanId), "the orphan agent should outlive its replica");

        var clock = Stopwatch.StartNew();
        var response = await b.GetServerAsync(Repo, workspace, TimeSpan.FromSeconds(60));
        output.WriteLine($"B answered {response.AgentId} at {response.Address} after {clock.ElapsedMilliseconds} ms");

        Assert.False(response.Warm);
        Assert.NotEqual(orphanId, response.AgentId);
        await TestWait.EventuallyAsync(() => Task.FromResult(!UnixProcesses.IsAgentProcess(orphanPid, orphanId)), "the orphan to exit");
        Assert.Equal(1, b.CountLines($"Agent {orphanId} is Allocating under a lapsed lease of {leaseOwner}; cleaning it up"));
        var row = Assert.Single(await ReadRowsAsync(connectionString));
        Assert.Equal((response.AgentId, "Ready"), (row.AgentId, row.State));
        Assert.Equal(response.AgentId, Assert.Single(OrchestratorReplicaProcess.AgentProcesses(_root)).AgentId);

        // "Working": the new agent answers its own gRPC API at the address B handed out.
        using var channel = GrpcChannel.ForAddress(response.Address);
        var status = await new V1.Agent.AgentClient(channel).GetStatusAsync(new GetStatusRequest())
            .ResponseAsync.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(response.AgentId, status.AgentId);
    }

    [Fact]
    public async Task TwoReplicas_IdleAgentIsReapedExactlyOnce_ByTheOneReplicaHoldingTheReaperLease()
    {
        var (_, connectionString) = await postgres.CreateDatabaseAsync();
        var workspace = CreateWorkspace();
        // The agent's own idle exit is at twice the TTL; the reaper (every 0.3 s) must act well before that.
        string[] reaping = ["--idle-ttl", "00:00:03", "--reap-interval", "00:00:00.3", "--build-tool", "/bin/true"];
        var replicas = await Task.WhenAll(
            StartReplicaAsync("r1", connectionString, RealAgent, reaping),
            StartReplicaAsync("r2", connectionString, RealAgent, reaping));

        var response = await replicas[0].GetServerAsync(Repo, workspace, TimeSpan.FromSeconds(30));
        var pid = int.Parse(response.BackendRef, System.Globalization.CultureInfo.InvariantCulture);
        await TestWait.EventuallyAsync(async () => (await ReadRowsAsync(connectionString)).Count == 0, "the agent's row to be reaped");
        await TestWait.EventuallyAsync(() => Task.FromResult(!UnixProcesses.IsAgentProcess(pid, response.AgentId)), "the agent to exit");
        // Three more passes (each renews the reaper lease, moving its expiry on): nobody may find anything left to do.
        const string LeaseExpiry = "SELECT expires_at FROM leases WHERE lease_name = 'reaper'";
        for (var pass = 0; pass < 3; pass++)
        {
            var before = await ScalarAsync(connectionString, LeaseExpiry);
            await TestWait.EventuallyAsync(async () => !Equals(await ScalarAsync(connectionString, LeaseExpiry), before), "another reaper pass");
        }

        var reapedBy = replicas.Where(r => r.CountLines($"Reaping agent {response.AgentId}") > 0).ToList();
        var reaper = Assert.Single(reapedBy);
        Assert.Equal(1, reaper.CountLines($"Reaping agent {response.AgentId}"));
        Assert.All(replicas, r =>
        {
            Assert.Equal(0, r.CountLines("Reaper pass failed"));
            Assert.Equal(0, r.CountLines($"Agent {response.AgentId} ({response.BackendRef}) is dead"));
        });
        // One replica took the reaper lease and kept it; the other never ran a pass.
        Assert.Equal(1, reaper.CountLines("now holds the reaper lease"));
        Assert.Equal(0, replicas.Single(r => r != reaper).CountLines("now holds the reaper lease"));
        var owner = await ScalarAsync(connectionString, "SELECT owner_id FROM leases WHERE lease_name = 'reaper'");
        Assert.Contains($"/{reaper.Pid}/", (string)owner!, StringComparison.Ordinal);
        Assert.Empty(OrchestratorReplicaProcess.AgentProcesses(_root));
    }

    [Fact]
    public async Task DatabaseUnreachableAtStartUp_ExitsNonZeroQuicklyWithOneLineNamingHostAndPort()
    {
        // A port nothing listens on: bind, note, release.
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();

        var clock = Stopwatch.StartNew();
        var replica = OrchestratorReplicaProcess.Launch(
            "closed", CreateStateDirectory("closed"), output,
            "--local-mode", "--port", "0", "--state-path", Path.Combine(_root, "closed", "orchestrator.db"),
            "--postgres", $"Host=127.0.0.1;Port={port};Username=rbs;Password=secret-pw;Database=rbs");
        _replicas.Add(replica);
        // Process.WaitForExitAsync also waits for the end of the redirected output: every line is in.
        var exitCode = await replica.WaitForExitAsync(TimeSpan.FromSeconds(30));

        output.WriteLine($"exit {exitCode} after {clock.ElapsedMilliseconds} ms");
        Assert.NotEqual(0, exitCode);
        // One line, nothing else: no warning about a retry, no stack trace.
        var line = Assert.Single(replica.Lines);
        Assert.StartsWith("rbs-orchestrator: cannot start: ", line, StringComparison.Ordinal);
        Assert.Contains($"127.0.0.1:{port}", line, StringComparison.Ordinal);
        Assert.DoesNotContain("secret-pw", line, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", line, StringComparison.Ordinal);
    }

    private async Task<OrchestratorReplicaProcess> StartReplicaAsync(string name, string connectionString, string agentPath, params string[] extra)
    {
        var stateDirectory = CreateStateDirectory(name);
        string[] args =
        [
            "--local-mode",
            "--port", "0",
            "--state-path", Path.Combine(stateDirectory, "orchestrator.db"),
            "--postgres", connectionString,
            "--agent-path", agentPath,
            .. extra,
        ];
        var replica = await OrchestratorReplicaProcess.StartAsync(name, stateDirectory, output, args);
        lock (_replicas)
        {
            _replicas.Add(replica);
        }

        return replica;
    }

    private string CreateStateDirectory(string name) => Directory.CreateDirectory(Path.Combine(_root, name)).FullName;

    private string CreateWorkspace() => Directory.CreateDirectory(Path.Combine(_root, "workspaces", "main")).FullName;

    private IEnumerable<string> AgentLogs(string replicaName)
    {
        var directory = Path.Combine(_root, replicaName, "agents");
        return Directory.Exists(directory) ? Directory.GetFiles(directory, "*.log") : [];
    }

    private static async Task<List<Row>> ReadRowsAsync(string connectionString)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync().WaitAsync(TimeSpan.FromSeconds(10));
        await using var command = new NpgsqlCommand("SELECT agent_id, state, backend_ref, lease_owner FROM agents", connection);
        await using var reader = await command.ExecuteReaderAsync();
        var rows = new List<Row>();
        while (await reader.ReadAsync())
        {
            rows.Add(new Row(reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.IsDBNull(3) ? null : reader.GetString(3)));
        }

        return rows;
    }

    private static async Task<object?> ScalarAsync(string connectionString, string sql)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync().WaitAsync(TimeSpan.FromSeconds(10));
        await using var command = new NpgsqlCommand(sql, connection);
        return await command.ExecuteScalarAsync();
    }

    private sealed record Row(string AgentId, string State, string BackendRef, string? LeaseOwner);
}
