using System.Net;

namespace Rbs.Agent.Tunnel;

/// <summary>Kestrel "listens" on this: connections are accepted by dialing out to the gateway.</summary>
internal sealed class TunnelEndPoint(Uri gatewayUri) : EndPoint
{
    /// <summary>How a tunnel endpoint starts in the server's bound addresses (the ready file skips those).</summary>
    public const string HostPrefix = "rbs-tunnel.";

    public Uri GatewayUri => gatewayUri;

    /// <summary>
    /// Neither IP nor Unix socket. EndPoint's own getter throws, and Kestrel's connection metrics read it for every
    /// connection once anything listens to its meter (OpenTelemetry does): the accept loop died and no tunnel answered.
    /// </summary>
    public override System.Net.Sockets.AddressFamily AddressFamily => System.Net.Sockets.AddressFamily.Unspecified;

    // Kestrel prints this as the bound address ("http://" + ToString()); keep it host-like.
    public override string ToString() => $"{HostPrefix}{gatewayUri.Host}:{gatewayUri.Port}";
}
