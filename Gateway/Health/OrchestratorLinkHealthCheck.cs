using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Rbs.Gateway.Registration;

namespace Rbs.Gateway.Health;

/// <summary>
/// Readiness: the gateway's link to the orchestrator works (GetServer is proxied there, and an agent's expired join
/// token or a stream for a disconnected agent is checked there). Asks the orchestrator's grpc.health.v1 service
/// <c>liveness</c> — whether the orchestrator answers, not whether its own dependencies are up — so a database outage
/// makes the orchestrator unready without also pulling every gateway replica out of the load balancer, where they
/// still carry the streams of connected agents.
/// </summary>
internal sealed class OrchestratorLinkHealthCheck(OrchestratorChannel orchestrator) : IHealthCheck
{
    /// <summary>The orchestrator's health service that answers while its process does (docs/operations.md).</summary>
    public const string OrchestratorLivenessService = "liveness";

    /// <summary>Bound of one check; the chart gives the readiness probe 3 s.</summary>
    public static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(2);

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            // The channel the internal API calls use: the check sees the link they depend on.
            var client = new Grpc.Health.V1.Health.HealthClient(orchestrator.Channel);
            var reply = await client.CheckAsync(
                new HealthCheckRequest { Service = OrchestratorLivenessService },
                deadline: DateTime.UtcNow + CallTimeout,
                cancellationToken: cancellationToken);
            return reply.Status == HealthCheckResponse.Types.ServingStatus.Serving
                ? HealthCheckResult.Healthy($"orchestrator at {orchestrator.Address} answers")
                : HealthCheckResult.Unhealthy($"orchestrator at {orchestrator.Address} answers {reply.Status}");
        }
        catch (RpcException e)
        {
            return HealthCheckResult.Unhealthy($"orchestrator at {orchestrator.Address} does not answer: {e.Status.StatusCode} {e.Status.Detail}");
        }
    }
}
