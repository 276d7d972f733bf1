using System.Data.Common;

namespace Rbs.Orchestrator.State.Postgres;

/// <summary>
/// The state store's database cannot be reached or refused to serve (connection refused, timed out,
/// server shutting down, authentication failed, database missing). Transient from a client's point of
/// view: GetServer maps it to gRPC <c>Unavailable</c> (jbazel exits 38); at start-up it is fatal with the
/// message as the one actionable line. Nothing has been half written when it is thrown.
/// A <see cref="DbException"/>, so code that already maps store faults (<c>catch (DbException)</c>)
/// handles it without knowing which store is configured.
/// </summary>
internal sealed class StateStoreUnavailableException : DbException
{
    public StateStoreUnavailableException()
    {
    }

    public StateStoreUnavailableException(string message)
        : base(message)
    {
    }

    public StateStoreUnavailableException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>Always: the same call can succeed once the database is back.</summary>
    public override bool IsTransient => true;

    /// <summary>The server's SQLSTATE when it answered (e.g. 57P01, 28P01, 3D000); null when it could not be reached.</summary>
    public override string? SqlState => (InnerException as DbException)?.SqlState;
}
