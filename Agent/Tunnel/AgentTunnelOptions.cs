namespace Rbs.Agent.Tunnel;

/// <summary>
/// Tunnel mode (section <c>Agent:Tunnel</c>, env <c>Agent__Tunnel__Key</c>): the agent listens on nothing and
/// dials out to the gateway's agent endpoint; Kestrel serves the agent's gRPC over those connections.
/// Enabled when <see cref="GatewayAddress"/> is set.
/// </summary>
internal sealed class AgentTunnelOptions
{
    public const string SectionName = "Agent:Tunnel";

    /// <summary>The gateway's agent endpoint, e.g. <c>http://rbs-gateway:8081</c> (<c>https</c>/<c>wss</c> for TLS). Flag <c>--gateway</c>. Default none (tunnel mode off).</summary>
    public string? GatewayAddress { get; set; }

    /// <summary>Join token minted by the orchestrator for this agent id (tests; pods get it from a Secret through the environment). Flag <c>--join-token</c>. Default none.</summary>
    public string? JoinToken { get; set; }

    /// <summary>
    /// File holding the join token (preferred over the command line, which other users can read). Read once at start-up
    /// and deleted (emptied when its directory does not allow deleting); the token then lives in memory only, renewed by
    /// the gateway. Flag <c>--join-token-file</c>. Default none.
    /// </summary>
    public string? JoinTokenFile { get; set; }

    /// <summary>Idle tunnel connections kept open; one is replaced as soon as the gateway starts using it. Default <c>2</c>.</summary>
    public int SpareConnections { get; set; } = 2;

    /// <summary>
    /// Concurrent HTTP/2 streams one tunnel carries (Kestrel's <c>Http2.MaxStreamsPerConnection</c>, which the gateway's
    /// HTTP/2 client honours; beyond it the gateway takes another tunnel). Each stream keeps its own flow-control window,
    /// so a higher limit only means fewer tunnels to dial under load. Default <c>1000</c>.
    /// </summary>
    public int MaxStreamsPerTunnel { get; set; } = 1000;

    /// <summary>
    /// Extra spares dialled ahead of demand: when a tunnel's stream count reaches 3/4 of <see cref="MaxStreamsPerTunnel"/>,
    /// one more idle tunnel is dialled (at most this many at a time) so the gateway finds a live spare when it needs
    /// another connection. Default <c>4</c>.
    /// </summary>
    public int MaxExtraSpares { get; set; } = 4;

    /// <summary>
    /// Raw relay tunnels kept parked at each gateway replica that announces a relay endpoint (the 101's
    /// <c>rbs-gateway-relay-port</c>; Shared/Tunnel/RelayProtocol.cs). The gateway splices one client connection onto one
    /// of them, so the client's HTTP/2 ends at the agent's Kestrel instead of being terminated twice at the gateway; one is
    /// redialled as soon as the gateway takes it. Each costs one idle TCP connection (TLS for a <c>wss://</c> gateway).
    /// <c>0</c> disables relay tunnels (clients are then forwarded over the WebSocket tunnels). Env
    /// <c>Agent__Tunnel__RelaySpareConnections</c>. Default <c>4</c>.
    /// </summary>
    public int RelaySpareConnections { get; set; } = 4;

    /// <summary>First reconnect delay (the cap of the first jittered wait). Default <c>00:00:00.100</c>.</summary>
    public TimeSpan ReconnectInitialDelay { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>
    /// Cap of the exponential reconnect delay (full jitter below it). Short, because it bounds how long a live agent
    /// stays unreachable after a gateway restart or outage ends, which is what the first build after it waits; the
    /// cost is at most one refused connect per spare every few seconds while the gateway is down. Default <c>00:00:05</c>.
    /// </summary>
    public TimeSpan ReconnectMaxDelay { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>WebSocket ping interval on tunnels. Default <c>00:00:15</c>.</summary>
    public TimeSpan KeepAliveInterval { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>A tunnel whose gateway does not answer a ping within this time is dropped and redialled. Default <c>00:00:10</c>.</summary>
    public TimeSpan KeepAliveTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Timeout of one WebSocket connect to the gateway. Default <c>00:00:10</c>.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// When the gateway finally refuses the credentials (4xx), stop the agent instead of idling without a tunnel — once
    /// no request is in flight: a running command is never cut for it. Default <c>true</c>.
    /// </summary>
    public bool StopOnRejection { get; set; } = true;

    /// <summary>Friendly flags for the agent's command line (merge into the agent's switch mappings).</summary>
    public static readonly Dictionary<string, string> SwitchMappings = new(StringComparer.Ordinal)
    {
        ["--gateway"] = $"{SectionName}:{nameof(GatewayAddress)}",
        ["--join-token"] = $"{SectionName}:{nameof(JoinToken)}",
        ["--join-token-file"] = $"{SectionName}:{nameof(JoinTokenFile)}",
    };

    /// <summary>The WebSocket URI of the gateway's tunnel endpoint.</summary>
    public Uri ConnectUri() =>
        ConnectUriOf(GatewayAddress ?? throw new InvalidOperationException("Agent:Tunnel:GatewayAddress is not set."));

    /// <summary>The tunnel WebSocket address of a gateway (or replica) agent endpoint given as http(s):// or ws(s)://.</summary>
    public static Uri ConnectUriOf(string address)
    {
        var builder = new UriBuilder(address.Contains("://", StringComparison.Ordinal) ? address : "http://" + address);
        builder.Scheme = builder.Scheme switch
        {
            "http" or "ws" => "ws",
            "https" or "wss" => "wss",
            _ => throw new FormatException($"Agent:Tunnel:GatewayAddress '{address}' must be http(s):// or ws(s)://."),
        };
        builder.Path = builder.Path.TrimEnd('/') + "/tunnel/v1/connect";
        return builder.Uri;
    }
}
