namespace Rbs.Orchestrator.State;

/// <summary>Lifecycle of an agent row.</summary>
internal enum AgentState
{
    /// <summary>A replica holds the allocation lease and is creating the agent.</summary>
    Allocating = 0,

    /// <summary>The agent is running and reachable; GetServer hands it out.</summary>
    Ready = 1,

    /// <summary>Being deleted (reaped, found dead, or allocation failed).</summary>
    Terminating = 2,
}

/// <summary>One agent for (user, repository). The store keeps at most one row per (UserId, RepoHash).</summary>
/// <param name="AgentId">Opaque id, unique for the agent's lifetime ("a" + 20 lowercase hex).</param>
/// <param name="UserId">Owner; "local" in local mode.</param>
/// <param name="RepoHash">The client's RepoHash.</param>
/// <param name="SourcePath">Workspace path on the agent's side.</param>
/// <param name="Backend">Compute backend name ("process", "kubernetes").</param>
/// <param name="BackendRef">The backend's handle: pid for processes, pod name for Kubernetes. Empty while allocating.</param>
/// <param name="Address">Direct address ("http://127.0.0.1:PORT", "http://PODIP:9011"). Empty while allocating.</param>
/// <param name="State">Lifecycle state.</param>
/// <param name="CreatedAt">When the allocation started.</param>
/// <param name="LastUsedAt">Last GetServer hand-out or observed activity; drives idle reaping.</param>
/// <param name="LeaseOwner">Replica that holds the allocation/termination lease, if any.</param>
/// <param name="LeaseExpiresAt">When that lease lapses; after it any replica may clean the row up.</param>
internal sealed record AgentRecord(
    string AgentId,
    string UserId,
    string RepoHash,
    string SourcePath,
    string Backend,
    string BackendRef,
    string Address,
    AgentState State,
    DateTimeOffset CreatedAt,
    DateTimeOffset LastUsedAt,
    string? LeaseOwner,
    DateTimeOffset? LeaseExpiresAt);
