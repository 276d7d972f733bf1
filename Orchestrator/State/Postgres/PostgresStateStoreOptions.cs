namespace Rbs.Orchestrator.State.Postgres;

/// <summary>
/// The shared PostgreSQL state store (several orchestrator replicas on one database). The same settings
/// reach Cloud Spanner through a PGAdapter sidecar: point <see cref="ConnectionString"/> at PGAdapter
/// (e.g. <c>Host=localhost;Port=5432;Database=rbs</c>); the store's SQL stays inside Spanner's
/// PostgreSQL dialect, so no dialect switch is needed.
/// Flag/env spellings: <c>--Orchestrator:Postgres:ConnectionString=...</c>,
/// <c>Orchestrator__Postgres__ConnectionString=...</c>, or the standard <c>ConnectionStrings__rbs=...</c>.
/// </summary>
internal sealed class PostgresStateStoreOptions
{
    public const string SectionName = "Orchestrator:Postgres";

    /// <summary>
    /// Npgsql connection string, e.g. <c>Host=db;Port=5432;Username=rbs;Password=...;Database=rbs</c>.
    /// Default: empty, which falls back to <c>ConnectionStrings:rbs</c>; one of the two is required.
    /// </summary>
    public string ConnectionString { get; set; } = "";

    /// <summary>
    /// Upper bound for one SQL statement; a slower statement fails as "store unavailable" rather than
    /// hanging a GetServer call. Default: 00:00:10.
    /// </summary>
    public TimeSpan CommandTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Upper bound for opening a connection, used unless the connection string sets <c>Timeout</c>
    /// itself. Short, so an unreachable database fails a request fast instead of after Npgsql's 15 s.
    /// Default: 00:00:05.
    /// </summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(5);
}
