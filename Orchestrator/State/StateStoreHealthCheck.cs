using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Rbs.Orchestrator.State;

/// <summary>
/// Readiness: the state store answers one cheap read within <see cref="Timeout"/> (SQLite: the file opens and has its
/// schema; PostgreSQL or Spanner through PGAdapter: the server answers). Without it GetServer can only fail, so an
/// orchestrator whose store is down is taken out of its Service until the store is back.
/// </summary>
internal sealed class StateStoreHealthCheck(IStateStore store) : IHealthCheck
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(2);

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(Timeout);
        try
        {
            await store.CheckAsync(timeout.Token);
            return HealthCheckResult.Healthy(store.Description);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return HealthCheckResult.Unhealthy($"{store.Description}: no answer within {Timeout.TotalSeconds:0.#} s");
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return HealthCheckResult.Unhealthy($"{store.Description}: {e.GetBaseException().Message}");
        }
    }
}
