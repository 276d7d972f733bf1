using System.ComponentModel.DataAnnotations;

namespace Rbs.Gateway.Hosting;

/// <summary>Configuration of rbs-gateway (section <c>Gateway</c>, env <c>Gateway__Key</c>; friendly flags: <see cref="GatewayHost.CommandLine"/>).</summary>
internal sealed class GatewayOptions
{
    public const string SectionName = "Gateway";

    /// <summary>Client endpoint (jbazel): gRPC over HTTP/2, TLS when <see cref="CertificatePath"/> is set. Flag <c>--public-listen</c>. Default <c>127.0.0.1:8080</c>.</summary>
    [Required]
    public string PublicListen { get; set; } = "127.0.0.1:8080";

    /// <summary>Agent endpoint: tunnel WebSockets and the internal registration API; keep it cluster-internal. Flag <c>--agent-listen</c>. Default <c>127.0.0.1:8081</c>.</summary>
    [Required]
    public string AgentListen { get; set; } = "127.0.0.1:8081";

    /// <summary>Where <c>/rbs.v1.Orchestrator/*</c> calls are proxied (h2c or https). Flag <c>--orchestrator</c>. Default <c>http://127.0.0.1:50051</c>.</summary>
    [Required]
    public string OrchestratorAddress { get; set; } = "http://127.0.0.1:50051";

    /// <summary>PFX/PKCS#12 certificate for TLS on the public endpoint. Default none (h2c).</summary>
    public string? CertificatePath { get; set; }

    /// <summary>Password of <see cref="CertificatePath"/>. Default none.</summary>
    public string? CertificatePassword { get; set; }

    /// <summary>Base64 HMAC key (≥ 32 bytes) shared with the orchestrator for join and session tokens. Default none (then <see cref="TokenKeyFile"/> is required).</summary>
    public string? TokenKey { get; set; }

    /// <summary>File holding the base64 token key (a mounted secret). Flag <c>--token-key-file</c>. Default none.</summary>
    public string? TokenKeyFile { get; set; }

    /// <summary>
    /// Further base64 keys a token may be signed with during a key rotation (separated by whitespace or commas), beside
    /// the current key that signs: the next key before every host signs with it, or the previous one until the tokens it
    /// signed have expired. Env <c>Gateway__AcceptedTokenKeys</c>. Default none (docs/connect-modes.md, "Key rotation").
    /// </summary>
    public string? AcceptedTokenKeys { get; set; }

    /// <summary>File of such keys, one per line. Flag <c>--accepted-token-keys-file</c>. Default none.</summary>
    public string? AcceptedTokenKeysFile { get; set; }

    /// <summary>Tolerated clock difference between the hosts that mint and check tokens (<c>nbf</c>/<c>exp</c>). Default <c>00:00:30</c>.</summary>
    public TimeSpan TokenClockSkew { get; set; } = Rbs.Shared.Tokens.RbsTokenService.DefaultClockSkew;

    /// <summary>The current key and the accepted ones; throws <see cref="FormatException"/>/<see cref="IOException"/> with a clear message.</summary>
    public Rbs.Shared.Tokens.RbsTokenKeyRing ReadTokenKeys() =>
        Rbs.Shared.Tokens.RbsTokenKeyRing.Load(TokenKey, TokenKeyFile, AcceptedTokenKeys, AcceptedTokenKeysFile);

    /// <summary>WebSocket ping interval and HTTP/2 ping delay on tunnels. Default <c>00:00:15</c>.</summary>
    public TimeSpan TunnelKeepAliveInterval { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>A tunnel whose peer does not answer a ping within this time is evicted. Default <c>00:00:10</c>.</summary>
    public TimeSpan TunnelKeepAliveTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a new inner HTTP/2 connection (and the streams queued for it) waits for a live idle tunnel of its agent while the agent dials more; the bounded admission wait under load. Default <c>00:00:30</c>.</summary>
    public TimeSpan TunnelAcquireTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Liveness probe before a tunnel is used: the agent must answer the HTTP/2 preface with SETTINGS within this time, else the tunnel is dropped and another tried. Default <c>00:00:10</c>.</summary>
    public TimeSpan TunnelProbeTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>HTTP/2 receive window of one client stream on the public endpoint (Kestrel <c>Http2.InitialStreamWindowSize</c>): the most of a client's upload (stdin, workspace sync) the gateway buffers per stream. Default <c>262144</c> (256 KiB).</summary>
    [Range(65_535, int.MaxValue)]
    public int PublicStreamWindowSize { get; set; } = 256 * 1024;

    /// <summary>Response bytes Kestrel buffers per client stream before the forwarder waits for the client to read (Kestrel <c>MaxResponseBufferSize</c>; the forwarder's 64 KiB write in flight comes on top). Default <c>16384</c> (16 KiB).</summary>
    [Range(4096, int.MaxValue)]
    public int PublicResponseBufferSize { get; set; } = 16 * 1024;

    /// <summary>Initial HTTP/2 receive window of one stream on a tunnel (the gateway's HTTP/2 client); it grows with dynamic window scaling up to <see cref="TunnelStreamMaxWindowSize"/> for streams whose client keeps up. Default <c>65535</c>.</summary>
    [Range(65_535, int.MaxValue)]
    public int TunnelStreamWindowSize { get; set; } = 65_535;

    /// <summary>
    /// Cap of that dynamic window, i.e. the most the gateway buffers per agent stream for a slow client (.NET's own
    /// default is 16 MiB, which let 2,000 streams take 1.5 GiB; 1 MiB still peaked at 658 MiB). Process-wide: applied
    /// through the <c>DOTNET_SYSTEM_NET_HTTP_SOCKETSHTTPHANDLER_FLOWCONTROL_MAXSTREAMWINDOWSIZE</c> environment variable
    /// at startup unless that is set already. The agent leg is in-cluster (sub-millisecond round trips), where 256 KiB in
    /// flight per stream keeps one stream at full speed. Default <c>262144</c> (256 KiB).
    /// </summary>
    [Range(65_535, int.MaxValue)]
    public int TunnelStreamMaxWindowSize { get; set; } = 256 * 1024;

    /// <summary>
    /// Client streams the gateway forwards at once, over all agents. Each one owns bounded buffers, so this bounds the
    /// gateway's stream memory (the arithmetic: docs/limits.md, "Gateway memory"). A stream beyond it waits up to
    /// <see cref="TunnelAcquireTimeout"/> for one to end, then fails with <c>Unavailable</c> (EventId 134). Default <c>2048</c>.
    /// </summary>
    [Range(1, 1_000_000)]
    public int MaxConcurrentStreams { get; set; } = 2048;

    /// <summary>
    /// The most managed heap the gateway may use, in bytes, applied at startup as the runtime's GC heap hard limit: the
    /// collector then works to stay under it instead of letting dead stream buffers pile up, and new streams wait while
    /// the heap is above <see cref="StreamAdmissionHeapPercent"/> of it (docs/limits.md, "Gateway memory"). It must exceed
    /// the live buffers of <see cref="MaxConcurrentStreams"/> slow streams, or streams in flight fail with
    /// OutOfMemoryException: 2,000 slow streams of the bench held more than 256 MiB. An explicit
    /// <c>DOTNET_GCHeapHardLimit</c> wins. Flag <c>--heap-limit</c>. Default <c>0</c>: the runtime's own limit (75% of a
    /// container's memory limit; none on a bare host).
    /// </summary>
    public long HeapLimit { get; set; }

    /// <summary>The smallest non-zero <see cref="HeapLimit"/> accepted: a busy gateway's heap holds far more than this.</summary>
    public const long MinHeapLimit = 64L * 1024 * 1024;

    /// <summary>
    /// A new client stream is admitted only while the heap after the last collection is below this percentage of the heap
    /// limit; above it, it waits up to <see cref="TunnelAcquireTimeout"/> (as for a stream slot), then fails with
    /// <c>Unavailable</c> (EventId 135). Streams in flight are never cut. Default <c>85</c>.
    /// </summary>
    [Range(1, 100)]
    public int StreamAdmissionHeapPercent { get; set; } = 85;

    /// <summary>
    /// Where agents park raw relay tunnels (Relay/, Shared/Tunnel/RelayProtocol.cs): a plain TCP listener beside the agent
    /// endpoint, cluster-internal like it, announced to every agent on its tunnels' 101 (<c>rbs-gateway-relay-port</c>).
    /// A relayed client connection is spliced onto one such tunnel byte for byte, so its HTTP/2 ends at the agent.
    /// <c>off</c> disables the relay (clients' streams are then forwarded one by one). Flag <c>--relay-listen</c>.
    /// Default empty: the agent endpoint's host, an ephemeral port (a Service in front of one gateway needs a fixed one:
    /// the chart sets <c>0.0.0.0:8082</c>).
    /// </summary>
    public string RelayListen { get; set; } = string.Empty;

    /// <summary>True unless <see cref="RelayListen"/> is <c>off</c>.</summary>
    public bool RelayEnabled => !string.Equals(RelayListen.Trim(), "off", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Client connections relayed at once. Each holds at most <see cref="RelayBufferSize"/> of the agent's output (with TLS also
    /// Kestrel's write buffer of the client connection, 64 KiB) and Kestrel's read buffer of the client's uploads (1 MiB), so this bounds
    /// the relay's memory (docs/limits.md, "Gateway memory"). A request beyond it is answered 503, and the client sends
    /// its streams the per-stream way instead. Default <c>256</c>.
    /// </summary>
    [Range(0, 100_000)]
    public int MaxRelayConnections { get; set; } = 256;

    /// <summary>The most bytes one socket read of a relayed agent's output takes (one buffer per relayed connection; 16k reads per GiB). Default <c>262144</c> (256 KiB).</summary>
    [Range(4096, 16 * 1024 * 1024)]
    public int RelayBufferSize { get; set; } = 256 * 1024;

    /// <summary>Parked relay tunnels kept per agent; the agent's next one beyond it is refused (503) until one goes into use. Default <c>16</c>.</summary>
    [Range(1, 1024)]
    public int RelayTunnelsPerAgent { get; set; } = 16;

    /// <summary>How long a relay request waits for a parked tunnel of its agent (the agent dials a replacement for each one taken) before it is answered 503 and the client falls back to per-stream forwarding. Default <c>00:00:05</c>.</summary>
    public TimeSpan RelayAcquireTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>A client stream with no bytes in either direction for this long is cancelled (a quiet bazel phase must fit). Default <c>1.00:00:00</c>.</summary>
    public TimeSpan AgentStreamIdleTimeout { get; set; } = TimeSpan.FromDays(1);

    /// <summary>Lifetime of the refreshed join token returned to an agent on every tunnel connect (lets agents re-register after a gateway restart although the orchestrator's join token was short-lived). Default <c>00:30:00</c>.</summary>
    public TimeSpan JoinTokenRenewalLifetime { get; set; } = TimeSpan.FromMinutes(30);

    /// <summary>Upper bound for a proxied orchestrator call (GetServer may wait for a cold agent). Default <c>00:10:00</c>.</summary>
    public TimeSpan OrchestratorCallTimeout { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>
    /// Where agents dial this replica's agent endpoint directly (e.g. <c>http://POD_IP:8081</c>; the chart passes the pod
    /// IP from the downward API). Setting it makes this gateway one of several replicas: it holds a lease in the
    /// orchestrator's state store (rbs.v1.AgentDirectory/HeartbeatReplica), announces itself on every tunnel's 101
    /// (<c>rbs-gateway-replica</c>) and serves the live replica set to agents, which keep tunnels to every replica.
    /// Flag <c>--advertise-agent-address</c>. Default none: a single gateway, as before.
    /// </summary>
    public string? AdvertiseAgentAddress { get; set; }

    /// <summary>This replica's id, unique among live replicas (the pod name). Flag <c>--replica-id</c>. Default: the host name and a random suffix.</summary>
    public string? ReplicaId { get; set; }

    /// <summary>How often a replica renews its lease and refreshes the replica set; the lease lasts three intervals, so a killed replica leaves the set within that. Default <c>00:00:02</c>.</summary>
    public TimeSpan ReplicaHeartbeatInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// On SIGTERM a replica drains: it leaves the replica set, refuses new tunnels (503), and lets the streams in flight
    /// finish for up to this long before it cuts its tunnels and exits (also the host's shutdown timeout; the chart's
    /// <c>terminationGracePeriodSeconds</c> must exceed it). Default <c>00:00:25</c>.
    /// </summary>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(25);

    /// <summary>True when this gateway is one of several replicas (<see cref="AdvertiseAgentAddress"/> is set).</summary>
    public bool IsReplica => !string.IsNullOrWhiteSpace(AdvertiseAgentAddress);

    /// <summary>Once both endpoints listen, <c>{"publicAddress":..,"agentAddress":..,"pid":..}</c> is written here (atomically). Flag <c>--ready-file</c>. Default none.</summary>
    public string? ReadyFile { get; set; }
}
