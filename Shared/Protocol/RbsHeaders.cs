namespace Rbs.Shared.Protocol;

/// <summary>
/// The names of the <c>rbs-*</c> headers and gRPC metadata that two processes must spell alike: one side writes what
/// another reads, so a name lives here once and every side links this file (Shared/README.md).
/// </summary>
internal static class RbsHeaders
{
    /// <summary>
    /// On every tunnel-mode agent call (jbazel, probe, bench → gateway): the route GetServer returned, which names
    /// the agent whose tunnels carry the call.
    /// </summary>
    public const string AgentRoute = "rbs-agent-route";

    /// <summary>On the tunnel handshake's 101 response (gateway → agent): a fresh join token for the agent's later connects.</summary>
    public const string RenewedJoinToken = "rbs-join-token";

    /// <summary>
    /// On the tunnel handshake's 101 response: how long the renewed token lives, in whole seconds. Relative on purpose:
    /// the agent times its renewal on its own clock, so clock skew between the hosts does not matter.
    /// </summary>
    public const string RenewedJoinTokenLifetime = "rbs-join-token-lifetime";

    /// <summary>
    /// On the tunnel handshake's 101 response of a gateway that runs as one of several replicas: the replica's id. Its
    /// presence tells the agent to keep tunnels to every replica in <c>GatewayReplicaList</c>; a single gateway
    /// (or an older one) sends none and the agent dials only its configured address.
    /// </summary>
    public const string GatewayReplica = "rbs-gateway-replica";

    /// <summary>
    /// On the tunnel handshake's 101 response of a gateway with a relay endpoint: its TCP port on the same host as the
    /// agent endpoint. The agent then keeps raw relay tunnels there as well (<c>Shared/Tunnel/RelayProtocol.cs</c>); a
    /// gateway without one (or an older one) sends none and the agent dials only WebSocket tunnels.
    /// </summary>
    public const string GatewayRelayPort = "rbs-gateway-relay-port";
}
