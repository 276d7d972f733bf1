using System.Net;

namespace Rbs.Agent.Tunnel;

/// <summary>Kestrel "listens" on this: connections are accepted by dialing out to the gateway.</summary>
internal sealed class TunnelEndPoint(Uri gatewayUri) : EndPoint
{
    public Uri GatewayUri => gatewayUri;

    // Kestrel prints this as the bound address ("http://" + ToString()); keep it host-like.
    public override string ToString() => $"rbs-tunnel.{gatewayUri.Host}:{gatewayUri.Port}";
}
