using Grpc.Core;
using Rbs.Gateway.Registration;
using Rbs.V1;

namespace Rbs.Gateway.Dashboard;

/// <summary>
/// The dashboard's client of <c>rbs.v1.DashboardDirectory</c> on the orchestrator: the API-key check (the orchestrator's
/// own, so the gateway never holds a copy of the keys) and the user's agents from the state store, on the gateway's
/// <see cref="OrchestratorChannel"/> with its internal token.
/// </summary>
internal sealed class DashboardDirectoryClient(OrchestratorChannel orchestrator)
{
    public static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(5);

    public string Address => orchestrator.Address;

    /// <summary>The orchestrator's verdict on an API key. Throws <see cref="RpcException"/> when it could not be asked.</summary>
    public async Task<DashboardSignInResponse> SignInAsync(string apiKey, CancellationToken cancellationToken) =>
        await Client().SignInAsync(new DashboardSignInRequest { ApiKey = apiKey }, orchestrator.InternalHeaders(), DateTime.UtcNow + CallTimeout, cancellationToken);

    /// <summary>The user's agents in the orchestrator's state. Throws <see cref="RpcException"/> when it could not be asked.</summary>
    public async Task<IReadOnlyList<DashboardAgent>> ListAgentsAsync(string userId, CancellationToken cancellationToken) =>
        (await Client().ListUserAgentsAsync(new ListUserAgentsRequest { UserId = userId }, orchestrator.InternalHeaders(), DateTime.UtcNow + CallTimeout, cancellationToken)).Agents;

    private DashboardDirectory.DashboardDirectoryClient Client() => new(orchestrator.Channel);
}
