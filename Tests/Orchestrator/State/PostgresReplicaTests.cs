using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Npgsql;
using Rbs.Orchestrator.State;
using Rbs.Orchestrator.State.Postgres;
using Rbs.Tests.Orchestrator.Infrastructure;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// Real in-process orchestrators sharing one real PostgreSQL database through
/// <see cref="PostgresStateStoreServiceCollectionExtensions.AddPostgresStateStore"/>, spawning stand-in
/// agent processes: exactly-one allocation across replicas, and GetServer while the database is lost.
/// </summary>
public sealed class PostgresReplicaTests(PostgresServerFixture postgres, ITestOutputHelper output)
    : IClassFixture<PostgresServerFixture>, IAsyncLifetime
{
    private readonly OrchestratorTestContext _context = new(output);

    public Task InitializeAsync() => _context.InitializeAsync();

    public Task DisposeAsync() => _context.DisposeAsync();

    [Fact]
    public async Task TwoReplicas_HundredConcurrentGetServersForOneRepo_AllocateExactlyOneAgent()
    {
        var (_, connectionString) = await postgres.CreateDatabaseAsync();
        var replicas = new[]
        {
            await _context.StartOrchestratorAsync(TestAgents.Fake, UsePostgres(connectionString)),
            await _context.StartOrchestratorAsync(TestAgents.Fake, UsePostgres(connectionString)),
        };
        Assert.All(replicas, r => Assert.IsType<PostgresStateStore>(r.Store));
        var workspace = _context.CreateWorkspace("main");

        var responses = await Task.WhenAll(Enumerable.Range(0, 100).Select(i =>
            Task.Run(() => replicas[i % 2].GetServerAsync("repo-1", workspace)))).WaitAsync(TimeSpan.FromSeconds(90));

        Assert.Single(responses.Select(r => r.AgentId).Distinct());
        Assert.Equal(1, responses.Count(r => !r.Warm));
        var row = Assert.Single(await replicas[1].Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(responses[0].AgentId, row.AgentId);
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
        Assert.Single(Directory.GetFiles(_context.AgentsDirectory, "*.log"));
    }

    [Fact]
    public async Task AllocationOrphanedByAKilledReplica_IsCleanedUpByAnotherReplica_NoAgentLeftBehind()
    {
        var (_, connectionString) = await postgres.CreateDatabaseAsync();
        var survivor = await _context.StartOrchestratorAsync(TestAgents.Fake, UsePostgres(connectionString));
        var workspace = _context.CreateWorkspace("main");

        // What a replica killed mid-allocation leaves: an Allocating row under its lease, which has lapsed,
        // and the agent process it had started but never recorded (no pid in the row).
        var orphanId = "a" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(10));
        var readyFile = Path.Combine(_context.Root, orphanId + ".ready");
        using var orphanProcess = System.Diagnostics.Process.Start(TestAgents.Fake, ["--agent-id", orphanId, "--workspace", workspace, "--ready-file", readyFile]);
        try
        {
            await TestWait.EventuallyAsync(() => File.Exists(readyFile));
            var started = DateTimeOffset.UtcNow.AddMinutes(-2);
            Assert.True(await survivor.Store.TryInsertAsync(
                new AgentRecord(orphanId, "local", "repo-1", workspace, "process", "", "", AgentState.Allocating,
                    started, started, "killed-replica/4242/deadbeef", started.AddMinutes(1)),
                CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));

            var response = await survivor.GetServerAsync("repo-1", workspace);

            Assert.False(response.Warm);
            Assert.NotEqual(orphanId, response.AgentId);
            var row = Assert.Single(await survivor.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal(response.AgentId, row.AgentId);
            Assert.Equal(AgentState.Ready, row.State);
            await TestWait.EventuallyAsync(() => orphanProcess.HasExited);
        }
        finally
        {
            if (!orphanProcess.HasExited)
            {
                orphanProcess.Kill();
            }
        }
    }

    [Fact]
    public async Task DatabaseLostWhileServing_GetServerIsUnavailableWithAClearMessage_ThenRecovers()
    {
        var (_, connectionString) = await postgres.CreateDatabaseAsync();
        var target = new NpgsqlConnectionStringBuilder(connectionString);
        var address = (await Dns.GetHostAddressesAsync(target.Host!)).First(a => a.AddressFamily == AddressFamily.InterNetwork);
        await using var proxy = new TcpProxy(new IPEndPoint(address, target.Port));
        proxy.Start();
        target.Host = "127.0.0.1";
        target.Port = proxy.Port;
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake, UsePostgres(target.ConnectionString));
        var workspace = _context.CreateWorkspace("main");
        var first = await orchestrator.GetServerAsync("repo-1", workspace);

        await proxy.StopAsync();
        var ex = await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync("repo-1", workspace));
        output.WriteLine(ex.Status.Detail);
        Assert.Equal(StatusCode.Unavailable, ex.StatusCode);
        Assert.Contains($"PostgreSQL state store at 127.0.0.1:{proxy.Port}", ex.Status.Detail, StringComparison.Ordinal);

        proxy.Start();
        var again = await orchestrator.GetServerAsync("repo-1", workspace);
        Assert.True(again.Warm);
        Assert.Equal(first.AgentId, again.AgentId);
    }

    private static Action<WebApplicationBuilder> UsePostgres(string connectionString) => builder =>
    {
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionStrings:rbs"] = connectionString });
        builder.Services.AddPostgresStateStore(builder.Configuration);
    };
}
