using System.Net;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Rbs.Orchestrator.Hosting;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.Orchestrator.Infrastructure;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// The orchestrator's readiness reflects its state store (docs/operations.md): /readyz and grpc.health service ""
/// turn unready within seconds of the database going away and ready again when it is back, while liveness (/healthz,
/// grpc.health "liveness") stays serving throughout, so the kubelet takes the pod out of its Service without
/// restarting it. Uses a PostgreSQL server of its own, which it stops and starts.
/// </summary>
public sealed class StateStoreReadinessTests(ITestOutputHelper output)
{
    /// <summary>"Within seconds": the check's own bound is 2 s; the probe and its poll add little.</summary>
    private static readonly TimeSpan s_turnaround = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task StoppingPostgresMakesTheOrchestratorUnreadyButLiveAndStartingItMakesItReadyAgain()
    {
        await using var postgres = await PrivatePostgresServer.StartAsync(line => TestLog.Write(output, line));
        var context = new OrchestratorTestContext(output);
        try
        {
            var orchestrator = await context.StartOrchestratorAsync(TestAgents.Fake, extraArgs: ["--postgres", postgres.ConnectionString]);
            using var probes = new Probes(orchestrator.Address);
            Assert.Equal((HttpStatusCode.OK, HealthCheckResponse.Types.ServingStatus.Serving), await probes.ReadinessAsync());
            Assert.Contains("state_store: Healthy", await probes.TextAsync("/readyz"), StringComparison.Ordinal);

            await postgres.StopAsync();
            await TestWait.EventuallyAsync(
                async () => await probes.ReadinessAsync() == (HttpStatusCode.ServiceUnavailable, HealthCheckResponse.Types.ServingStatus.NotServing),
                "/readyz 503 and grpc.health \"\" NOT_SERVING with PostgreSQL stopped", s_turnaround);
            Assert.Contains("state_store: Unhealthy", await probes.TextAsync("/readyz"), StringComparison.Ordinal);
            Assert.Equal((HttpStatusCode.OK, HealthCheckResponse.Types.ServingStatus.Serving), await probes.LivenessAsync());

            await postgres.StartAsync();
            await TestWait.EventuallyAsync(
                async () => await probes.ReadinessAsync() == (HttpStatusCode.OK, HealthCheckResponse.Types.ServingStatus.Serving),
                "/readyz 200 and grpc.health \"\" SERVING with PostgreSQL back", s_turnaround);
        }
        finally
        {
            await context.DisposeAsync();
        }
    }

    [Fact]
    public async Task WithSqliteTheOrchestratorIsReadyAndLiveAndNamesItsStore()
    {
        var context = new OrchestratorTestContext(output);
        try
        {
            var orchestrator = await context.StartOrchestratorAsync(TestAgents.Fake);
            using var probes = new Probes(orchestrator.Address);
            Assert.Equal((HttpStatusCode.OK, HealthCheckResponse.Types.ServingStatus.Serving), await probes.ReadinessAsync());
            Assert.Equal((HttpStatusCode.OK, HealthCheckResponse.Types.ServingStatus.Serving), await probes.LivenessAsync());
            Assert.Contains($"state_store: Healthy (sqlite {context.StatePath})", await probes.TextAsync("/readyz"), StringComparison.Ordinal);
            // Liveness runs only the cheap checks: never the store.
            Assert.DoesNotContain("state_store", await probes.TextAsync("/healthz"), StringComparison.Ordinal);
        }
        finally
        {
            await context.DisposeAsync();
        }
    }

    /// <summary>Both spellings of each probe: HTTP on the h2c port (/readyz, /healthz) and grpc.health.v1 (what the chart uses).</summary>
    private sealed class Probes(string address) : IDisposable
    {
        private static readonly TimeSpan s_callTimeout = TimeSpan.FromSeconds(10);
        private readonly HttpClient _http = new(new SocketsHttpHandler()) { BaseAddress = new Uri(address), DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact, Timeout = s_callTimeout };
        private readonly GrpcChannel _channel = GrpcChannel.ForAddress(address);

        public Task<(HttpStatusCode, HealthCheckResponse.Types.ServingStatus)> ReadinessAsync() => BothAsync("/readyz", string.Empty);

        public Task<(HttpStatusCode, HealthCheckResponse.Types.ServingStatus)> LivenessAsync() => BothAsync("/healthz", OrchestratorServiceCollectionExtensions.LivenessService);

        /// <summary>The body (one line per check), also of a 503.</summary>
        public async Task<string> TextAsync(string path)
        {
            using var response = await _http.GetAsync(path).WaitAsync(s_callTimeout);
            return await response.Content.ReadAsStringAsync();
        }

        public void Dispose()
        {
            _http.Dispose();
            _channel.Dispose();
        }

        private async Task<(HttpStatusCode, HealthCheckResponse.Types.ServingStatus)> BothAsync(string path, string service)
        {
            using var response = await _http.GetAsync(path).WaitAsync(s_callTimeout);
            var grpc = await new Health.HealthClient(_channel).CheckAsync(new HealthCheckRequest { Service = service }, deadline: DateTime.UtcNow + s_callTimeout);
            return (response.StatusCode, grpc.Status);
        }
    }
}
