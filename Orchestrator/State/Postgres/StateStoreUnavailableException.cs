namespace Rbs.Orchestrator.State.Postgres;

/// <summary>
/// The state store's database cannot be reached or refused to serve (connection refused, timed out,
/// server shutting down, authentication failed, database missing). Transient from a client's point of
/// view: GetServer maps it to gRPC <c>Unavailable</c> (jbazel exits 38); at start-up it is fatal with the
/// message as the one actionable line. Nothing has been half written when it is thrown.
/// </summary>
internal sealed class StateStoreUnavailableException : Exception
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
}
