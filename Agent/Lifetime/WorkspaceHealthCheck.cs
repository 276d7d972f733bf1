using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using Rbs.Agent.Hosting;

namespace Rbs.Agent.Lifetime;

/// <summary>
/// Readiness: the workspace the build tool runs in is there and readable (a deleted or unmounted workspace, or a
/// volume gone read-only underneath, makes every command fail). Cheap: one directory open, no walk.
/// </summary>
internal sealed class WorkspaceHealthCheck(IOptions<AgentOptions> options) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var workspace = options.Value.Workspace;
        try
        {
            using var entries = Directory.EnumerateFileSystemEntries(workspace).GetEnumerator();
            entries.MoveNext();
            return Task.FromResult(HealthCheckResult.Healthy($"workspace {workspace}"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return Task.FromResult(HealthCheckResult.Unhealthy($"workspace {workspace} is not readable: {e.Message}"));
        }
    }
}
