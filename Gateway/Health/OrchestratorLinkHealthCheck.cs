using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;

namespace Rbs.Gateway.Health;

/// <summary>
/// Readiness: the gateway's link to the orchestrator works (GetServer is proxied there, and an agent's expired join
/// token or a stream for a disconnected agent is checked there). Asks the orchestrator's grpc.health.v1 service
/// <c>liveness</c> — whether the orchestrator answers, not whether its own dependencies are up — so a database outage
/// makes the orchestrator unready without also pulling every gateway replica out of the load balancer, where they
/// still carry the streams of connected agents.
/// </summary>
internal sealed class OrchestratorLinkHealthCheck : IHealthCheck, IDisposable
{
    /// <summary>The orchestrator's health service that answers while its process does (docs/operations.md).</summary>
    public const string OrchestratorLivenessService = "liveness";

    /// <summary>Bound of one check; the chart gives the readiness probe 3 s.</summary>
    public static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(2);

    private readonly string _address;
    private readonly Lazy<GrpcChannel> _channel;

    public OrchestratorLinkHealthCheck(IOptions<GatewayOptions> options)
    {
        _address = options.Value.OrchestratorAddress;
        _channel = new Lazy<GrpcChannel>(() => GrpcChannel.ForAddress(_address, new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler { ConnectTimeout = CallTimeout, UseProxy = false },
        }), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            var client = new Grpc.Health.V1.Health.HealthClient(_channel.Value);
            var reply = await client.CheckAsync(
                new HealthCheckRequest { Service = OrchestratorLivenessService },
                deadline: DateTime.UtcNow + CallTimeout,
                cancellationToken: cancellationToken);
            return reply.Status == HealthCheckResponse.Types.ServingStatus.Serving
                ? HealthCheckResult.Healthy($"orchestrator at {_address} answers")
                : HealthCheckResult.Unhealthy($"orchestrator at {_address} answers {reply.Status}");
        }
        catch (RpcException e)
        {
            return HealthCheckResult.Unhealthy($"orchestrator at {_address} does not answer: {e.Status.StatusCode} {e.Status.Detail}");
        }
    }

    public void Dispose()
    {
        if (_channel.IsValueCreated)
        {
            _channel.Value.Dispose();
        }
    }
}
