using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Tokens;
using Rbs.V1;

namespace Rbs.Gateway.Dashboard;

/// <summary>
/// The dashboard's client of <c>rbs.v1.DashboardDirectory</c> on the orchestrator: the API-key check (the orchestrator's
/// own, so the gateway never holds a copy of the keys) and the user's agents from the state store. Internal token, as
/// <see cref="Registration.AgentDirectoryClient"/>.
/// </summary>
internal sealed class DashboardDirectoryClient : IDisposable
{
    public static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(5);

    private static readonly TimeSpan s_internalTokenLifetime = TimeSpan.FromMinutes(2);

    private readonly RbsTokenService _tokens;
    private readonly Lazy<GrpcChannel> _channel;

    public DashboardDirectoryClient(IOptions<GatewayOptions> options, RbsTokenService tokens)
    {
        _tokens = tokens;
        Address = options.Value.OrchestratorAddress;
        _channel = new Lazy<GrpcChannel>(() => GrpcChannel.ForAddress(Address, new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler { ConnectTimeout = CallTimeout, PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1), UseProxy = false },
        }), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    public string Address { get; }

    /// <summary>The orchestrator's verdict on an API key. Throws <see cref="RpcException"/> when it could not be asked.</summary>
    public async Task<DashboardSignInResponse> SignInAsync(string apiKey, CancellationToken cancellationToken) =>
        await Client().SignInAsync(new DashboardSignInRequest { ApiKey = apiKey }, Headers(), DateTime.UtcNow + CallTimeout, cancellationToken);

    /// <summary>The user's agents in the orchestrator's state. Throws <see cref="RpcException"/> when it could not be asked.</summary>
    public async Task<IReadOnlyList<DashboardAgent>> ListAgentsAsync(string userId, CancellationToken cancellationToken) =>
        (await Client().ListUserAgentsAsync(new ListUserAgentsRequest { UserId = userId }, Headers(), DateTime.UtcNow + CallTimeout, cancellationToken)).Agents;

    public void Dispose()
    {
        if (_channel.IsValueCreated)
        {
            _channel.Value.Dispose();
        }
    }

    private DashboardDirectory.DashboardDirectoryClient Client() => new(_channel.Value);

    private Metadata Headers() => new()
    {
        { "authorization", "Bearer " + _tokens.Mint(RbsTokenKind.Internal, "gateway", "gateway", s_internalTokenLifetime) },
    };
}
