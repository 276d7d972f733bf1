using Rbs.Orchestrator.State;

namespace Rbs.Orchestrator.Compute;

/// <summary>What to start: one agent for (user, repository).</summary>
/// <param name="AgentId">Id minted by the orchestrator; the agent reports it back.</param>
/// <param name="UserId">Owner.</param>
/// <param name="RepoHash">Repository identity.</param>
/// <param name="SourcePath">Workspace path on the agent's side.</param>
/// <param name="Tunnel">Set when the agent must dial out to a gateway instead of (only) listening.</param>
internal sealed record AgentSpec(
    string AgentId,
    string UserId,
    string RepoHash,
    string SourcePath,
    TunnelSpec? Tunnel = null);

/// <summary>Where a tunnel-mode agent dials, and the join token that proves who it is.</summary>
internal sealed record TunnelSpec(string GatewayAddress, string JoinToken);

/// <summary>A started agent.</summary>
/// <param name="BackendRef">pid, pod name, ...</param>
/// <param name="Address">Direct address, e.g. "http://127.0.0.1:41234" or "http://10.0.0.7:9011".</param>
internal sealed record StartedAgent(string BackendRef, string Address);

internal enum AgentHealth
{
    /// <summary>Running and answering.</summary>
    Alive,

    /// <summary>Gone: process exited, pod deleted or failed.</summary>
    Dead,

    /// <summary>Could not tell right now (e.g. API server unreachable); do not act on it.</summary>
    Unknown,
}

/// <summary>A compute backend: local processes (<c>--local-mode</c>) or Kubernetes pods.</summary>
internal interface IComputeService
{
    /// <summary>Backend name stored in <see cref="AgentRecord.Backend"/>.</summary>
    string Backend { get; }

    /// <summary>
    /// Starts the agent and returns once it is listening (direct address known). Throws
    /// <see cref="ComputeException"/> with an actionable message when it cannot.
    /// </summary>
    Task<StartedAgent> StartAsync(AgentSpec spec, CancellationToken cancellationToken);

    /// <summary>Whether the agent behind <paramref name="record"/> still runs.</summary>
    Task<AgentHealth> ProbeAsync(AgentRecord record, CancellationToken cancellationToken);

    /// <summary>Stops and removes the agent. Idempotent: an agent already gone is success.</summary>
    Task StopAsync(AgentRecord record, CancellationToken cancellationToken);

    /// <summary>
    /// Agents this backend runs for this orchestrator (pods by label, processes by their ready files),
    /// so a restarted orchestrator can re-adopt the live ones missing from the store and stop strays.
    /// </summary>
    Task<IReadOnlyList<DiscoveredAgent>> DiscoverAsync(CancellationToken cancellationToken);

    /// <summary>
    /// The key a direct-mode client must present to the agent (<c>authorization: Bearer</c>; GetServer returns it as the
    /// session token), or null when the agent's listener needs none. Process agents under user isolation have one, so no
    /// other user's build on the same machine can use their loopback port.
    /// </summary>
    ValueTask<string?> GetDirectAccessKeyAsync(AgentRecord record, CancellationToken cancellationToken) => ValueTask.FromResult<string?>(null);
}

/// <summary>An agent found running by <see cref="IComputeService.DiscoverAsync"/>.</summary>
internal sealed record DiscoveredAgent(
    string AgentId,
    string UserId,
    string RepoHash,
    string SourcePath,
    string BackendRef,
    string Address);

/// <summary>A backend failure the client should see, with whether retrying may help.</summary>
internal sealed class ComputeException(string message, bool transient, Exception? inner = null)
    : Exception(message, inner)
{
    public bool Transient { get; } = transient;
}
