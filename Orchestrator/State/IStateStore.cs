namespace Rbs.Orchestrator.State;

/// <summary>
/// Durable agent state. Implementations: <c>SqliteStateStore</c> (embedded default) and
/// <c>PostgresStateStore</c> (shared by several replicas; also Spanner through PGAdapter).
/// Every method is atomic; none leaves a row half written.
/// </summary>
internal interface IStateStore
{
    /// <summary>Where the state lives, for logs and the start-up line; never contains a password.</summary>
    string Description { get; }

    /// <summary>Creates or upgrades the schema. Safe when several replicas start at once.</summary>
    Task InitializeAsync(CancellationToken cancellationToken);

    /// <summary>
    /// One cheap read of the agents table (readiness: the store answers and the schema is there). Throws when it does not;
    /// the caller bounds it with <paramref name="cancellationToken"/>.
    /// </summary>
    Task CheckAsync(CancellationToken cancellationToken);

    Task<AgentRecord?> GetAsync(string agentId, CancellationToken cancellationToken);

    /// <summary>The row for (user, repo), in any state.</summary>
    Task<AgentRecord?> FindAsync(string userId, string repoHash, CancellationToken cancellationToken);

    Task<IReadOnlyList<AgentRecord>> ListAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Inserts <paramref name="record"/> (state Allocating, with its lease) unless a row for the same
    /// (UserId, RepoHash) exists. Returns false, writing nothing, when one does: exactly one caller
    /// across all replicas wins an allocation.
    /// </summary>
    Task<bool> TryInsertAsync(AgentRecord record, CancellationToken cancellationToken);

    /// <summary>
    /// Replaces the row when its current state and lease owner still match <paramref name="expected"/>
    /// (optimistic concurrency). Returns false when someone else changed it first.
    /// </summary>
    Task<bool> TryUpdateAsync(AgentRecord expected, AgentRecord updated, CancellationToken cancellationToken);

    /// <summary>Sets LastUsedAt (never moves it backwards).</summary>
    Task TouchAsync(string agentId, DateTimeOffset at, CancellationToken cancellationToken);

    /// <summary>Deletes the row if it is still the agent with that id. Returns whether a row went.</summary>
    Task<bool> DeleteAsync(string agentId, CancellationToken cancellationToken);

    /// <summary>
    /// Takes or renews a named singleton lease (e.g. "reaper"), so one replica at a time does the work.
    /// Returns true when <paramref name="owner"/> holds it until now + <paramref name="duration"/>.
    /// </summary>
    Task<bool> TryAcquireLeaseAsync(string name, string owner, TimeSpan duration, CancellationToken cancellationToken);

    /// <summary>
    /// The leases not yet expired whose names start with <paramref name="prefix"/>, ordered by name (e.g. every live
    /// gateway replica: name <c>gateway-replica/ID</c>, owner its agent address).
    /// </summary>
    Task<IReadOnlyList<LeaseRecord>> ListLeasesAsync(string prefix, CancellationToken cancellationToken);

    /// <summary>Ends the lease now if <paramref name="owner"/> holds it. Returns whether it did.</summary>
    Task<bool> ReleaseLeaseAsync(string name, string owner, CancellationToken cancellationToken);
}

/// <summary>A named lease and its holder, as <see cref="IStateStore.ListLeasesAsync"/> reads it.</summary>
internal sealed record LeaseRecord(string Name, string Owner, DateTimeOffset ExpiresAt)
{
    /// <summary>The exclusive upper bound of names starting with <paramref name="prefix"/> (its last character plus one), for a range scan.</summary>
    public static string PrefixEnd(string prefix) =>
        prefix.Length == 0 ? "\uffff" : string.Concat(prefix.AsSpan(0, prefix.Length - 1), ((char)(prefix[^1] + 1)).ToString());
}
