using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Tokens;

namespace Rbs.Gateway.Registration;

/// <summary>
/// The gateway's one gRPC channel to the orchestrator (<see cref="GatewayOptions.OrchestratorAddress"/>), shared by its
/// internal-API clients (<see cref="AgentDirectoryClient"/>, the dashboard's directory) and the readiness check of that
/// link, and the short-lived internal token those API calls carry. GetServer itself goes through the YARP proxy, not here.
/// </summary>
internal sealed class OrchestratorChannel : IDisposable
{
    /// <summary>Connect bound; each call also sets its own deadline.</summary>
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(5);

    private static readonly TimeSpan s_internalTokenLifetime = TimeSpan.FromMinutes(2);

    private readonly RbsTokenService _tokens;
    private readonly Lazy<GrpcChannel> _channel;

    public OrchestratorChannel(IOptions<GatewayOptions> options, RbsTokenService tokens)
    {
        _tokens = tokens;
        Address = options.Value.OrchestratorAddress;
        _channel = new Lazy<GrpcChannel>(() => GrpcChannel.ForAddress(Address, new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler
            {
                ConnectTimeout = ConnectTimeout,
                PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1),
                UseProxy = false,
            },
        }), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    public string Address { get; }

    /// <summary>Created on first use: a gateway that never calls the orchestrator opens no connection.</summary>
    public GrpcChannel Channel => _channel.Value;

    /// <summary>Headers for the orchestrator's internal API: a freshly minted internal token.</summary>
    public Metadata InternalHeaders() => new()
    {
        { "authorization", "Bearer " + _tokens.Mint(RbsTokenKind.Internal, "gateway", "gateway", s_internalTokenLifetime) },
    };

    public void Dispose()
    {
        if (_channel.IsValueCreated)
        {
            _channel.Value.Dispose();
        }
    }
}
