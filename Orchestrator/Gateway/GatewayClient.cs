using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;
using Rbs.Shared.Tokens;
using Rbs.V1;

namespace Rbs.Orchestrator.Gateway;

/// <summary>Outcome of a registration check at the gateway.</summary>
/// <param name="Registered">The agent has a live tunnel.</param>
/// <param name="GatewayUnreachable">The gateway could not be asked at all (down, wrong address, wrong key).</param>
/// <param name="Message">Why not, for the client.</param>
internal sealed record RegistrationCheck(bool Registered, bool GatewayUnreachable, string? Message);

/// <summary>
/// The orchestrator's side of tunnel mode: picks the connect mode of a request, mints join tokens for new agents and
/// session tokens for clients, asks the gateway's <c>rbs.v1.GatewayRegistry</c> whether an agent is registered, and authenticates the
/// gateway's own calls (<see cref="AgentDirectoryService"/>). Registration is asked on every tunnel-mode GetServer,
/// warm or cold: the gateway is the only one that knows, and after a gateway restart an agent is unreachable until it
/// has re-registered (one loopback round trip on the warm path; nothing is remembered here).
/// </summary>
internal sealed partial class GatewayClient : IDisposable
{
    private readonly OrchestratorGatewayOptions _options;
    private readonly OrchestratorOptions _orchestrator;
    private readonly ILogger<GatewayClient> _logger;
    private readonly RbsTokenService? _tokens;
    private readonly AgentRegistrationClient? _registration;

    public GatewayClient(
        IOptions<OrchestratorGatewayOptions> options,
        IOptions<OrchestratorOptions> orchestrator,
        TimeProvider timeProvider,
        ILogger<GatewayClient> logger)
    {
        _options = options.Value;
        _orchestrator = orchestrator.Value;
        _logger = logger;
        if (!_options.IsConfigured)
        {
            return;
        }

        // ValidateOnStart has checked the key and the addresses before any call gets here.
        _tokens = new RbsTokenService(_options.ReadTokenKeys(), timeProvider, _options.TokenClockSkew);
        var tokens = _tokens;
        _registration = new AgentRegistrationClient(AgentEndpoint,
            () => tokens.Mint(RbsTokenKind.Internal, "orchestrator", "orchestrator", TimeSpan.FromMinutes(2)),
            new SocketsHttpHandler
            {
                ConnectTimeout = TimeSpan.FromSeconds(5),
                PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1),
            });
    }

    public bool IsConfigured => _tokens is not null;

    /// <summary>The gateway's public address (tunnel-mode GetServer answers).</summary>
    public string PublicAddress => _options.PublicAddress?.Trim() ?? string.Empty;

    /// <summary>Whether clients may ask the gateway for a relayed connection (<see cref="OrchestratorGatewayOptions.Relay"/>).</summary>
    public bool Relay => _options.Relay;

    private Uri AgentEndpoint
    {
        get
        {
            var text = _options.AgentAddress!.Trim();
            return new Uri(text.EndsWith('/') ? text : text + "/");
        }
    }

    /// <summary>The mode a request gets: its own, or the default; tunnel without a gateway is FailedPrecondition.</summary>
    public ConnectMode Resolve(ConnectMode requested)
    {
        var mode = requested == ConnectMode.Unspecified ? _orchestrator.GetDefaultConnectMode(_options) : requested;
        if (mode == ConnectMode.Tunnel && !IsConfigured)
        {
            throw new RpcException(new Status(StatusCode.FailedPrecondition,
                "tunnel mode needs a gateway: set --gateway-public-address, --gateway-agent-address and --token-key-file on the orchestrator, or use --rbs_connect=direct"));
        }

        return mode == ConnectMode.Tunnel ? ConnectMode.Tunnel : ConnectMode.Direct;
    }

    /// <summary>With a gateway configured every new agent dials out to it with a join token for (agent, user).</summary>
    public TunnelSpec? SpecFor(string agentId, string userId) =>
        _tokens is null
            ? null
            : new TunnelSpec(_options.AgentAddress!.Trim(), _tokens.Mint(RbsTokenKind.Join, agentId, userId, _options.JoinTokenLifetime));

    /// <summary>A session token for (agent, user): the gateway checks it on every stream.</summary>
    public string MintSession(string agentId, string userId) =>
        (_tokens ?? throw new InvalidOperationException("no gateway configured"))
            .Mint(RbsTokenKind.Session, agentId, userId, _options.SessionTokenLifetime);

    /// <summary>
    /// Whether <paramref name="agent"/> is registered at the gateway, long-polling up to RegistrationTimeout: a fresh
    /// agent dials in within its start-up, a warm one that is re-registering (gateway restart, dropped link) within
    /// its reconnect backoff; the answer comes the moment it registers.
    /// </summary>
    public async Task<RegistrationCheck> CheckRegisteredAsync(AgentRecord agent, CancellationToken cancellationToken)
    {
        if (_registration is null)
        {
            return new RegistrationCheck(false, true, "no gateway configured");
        }

        var timeout = _options.RegistrationTimeout;
        try
        {
            if (await _registration.WaitUntilRegisteredAsync(agent.AgentId, timeout, cancellationToken))
            {
                return new RegistrationCheck(true, false, null);
            }
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException)
        {
            // A status's detail says it ("Error connecting to subchannel.", the gateway's refusal); its Message repeats the whole status.
            var reason = e is RpcException rpc ? $"{rpc.StatusCode}: {rpc.Status.Detail}" : e.Message;
            Log.GatewayUnreachable(_logger, _options.AgentAddress!, agent.AgentId, reason);
            return new RegistrationCheck(false, true,
                $"cannot confirm that agent {agent.AgentId} registered at the gateway: the gateway's agent endpoint {_options.AgentAddress} " +
                $"did not answer ({reason}); check that rbs-gateway runs there (--gateway-agent-address) and shares the orchestrator's token key");
        }

        Log.NotRegistered(_logger, agent.AgentId, timeout.TotalSeconds);
        return new RegistrationCheck(false, false,
            $"agent {agent.AgentId} did not register at the gateway {_options.AgentAddress} within {timeout.TotalSeconds:0.#} s " +
            "(Orchestrator:Gateway:RegistrationTimeout); check that agents can reach that address and that gateway and orchestrator share the token key");
    }

    /// <summary>
    /// Authenticates a call of the gateway (<c>authorization: Bearer &lt;internal token&gt;</c>, signed with the shared key);
    /// throws the status to answer with otherwise.
    /// </summary>
    public async Task AuthenticateGatewayAsync(Metadata headers)
    {
        if (_tokens is null)
        {
            throw new RpcException(new Status(StatusCode.FailedPrecondition,
                "this orchestrator has no gateway configured (--gateway-public-address, --gateway-agent-address, --token-key-file)"));
        }

        const string Prefix = "Bearer ";
        var authorization = headers.GetValue("authorization");
        var token = authorization is not null && authorization.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase) ? authorization[Prefix.Length..].Trim() : null;
        var validation = await _tokens.ValidateAsync(token, RbsTokenKind.Internal);
        if (!validation.IsValid)
        {
            throw new RpcException(new Status(StatusCode.Unauthenticated,
                $"internal token rejected: {validation.Failure}; the gateway must use the orchestrator's token key (--token-key-file)"));
        }
    }

    public void Dispose() => _registration?.Dispose();

    private static partial class Log
    {
        [LoggerMessage(EventId = 600, Level = LogLevel.Error, Message = "The gateway's agent endpoint {Address} did not answer the registration query for agent {AgentId}: {Reason}")]
        public static partial void GatewayUnreachable(ILogger logger, string address, string agentId, string reason);

        [LoggerMessage(EventId = 601, Level = LogLevel.Warning, Message = "Agent {AgentId} is not registered at the gateway after {Seconds:0.#} s")]
        public static partial void NotRegistered(ILogger logger, string agentId, double seconds);
    }
}
