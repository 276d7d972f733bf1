using System.Net;

namespace Rbs.Agent.Tunnel;

/// <summary>Kestrel "listens" on this: connections are accepted by dialing out to the gateway.</summary>
internal sealed class TunnelEndPoint(Uri gatewayUri) : EndPoint
{
    /// <summary>How a tunnel endpoint starts in the server's bound addresses (the ready file skips those).</summary>
    public const string HostPrefix = "rbs-tunnel.";

    public Uri GatewayUri => gatewayUri;

    // Kestrel prints this as the bound address ("http://" + ToString()); keep it host-like.
    public override string ToString() => $"{HostPrefix}{gatewayUri.Host}:{gatewayUri.Port}";
}
