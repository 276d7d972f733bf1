using Microsoft.Extensions.Diagnostics.HealthChecks;
using Rbs.Agent.Execution;

namespace Rbs.Agent.Lifetime;

/// <summary>grpc.health.v1 status: serving until the agent starts shutting down (then probes stop routing to it).</summary>
internal sealed class AgentHealthCheck(CommandTracker tracker) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(tracker.IsStopping
            ? HealthCheckResult.Unhealthy("the agent is shutting down")
            : HealthCheckResult.Healthy());
}
