using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Rbs.Gateway.Tunnel;
using Rbs.Gateway.Hosting;

namespace Rbs.Tests.Gateway;

public sealed class AgentTunnelRegistryTests : IDisposable
{
    private readonly FakeTimeProvider _time = new(DateTimeOffset.UtcNow);
    private readonly AgentTunnelRegistry _registry;
    private readonly List<IDisposable> _sockets = [];

    public AgentTunnelRegistryTests()
    {
        _registry = new AgentTunnelRegistry(Options.Create(new GatewayOptions()), NullLoggerFactory.Instance, _time);
    }

    public void Dispose()
    {
        _registry.Dispose();
        foreach (var socket in _sockets)
        {
            socket.Dispose();
        }
    }

    [Fact]
    public void OfflineAgentKeepsItsEntryForAReconnectThenIsSweptAfterTheRetention()
    {
        var first = Add("agent-1", "alice")!;
        Assert.NotNull(_registry.FindOnline("agent-1"));

        _registry.Remove(first);
        Assert.Null(_registry.FindOnline("agent-1"));

        // A quick reconnect lands on the same entry (and HTTP/2 client) that waiting requests hold.
        var second = Add("agent-1", "alice")!;
        Assert.Same(first.Agent, second.Agent);
        _registry.Remove(second);

        _time.Advance(AgentTunnelRegistry.OfflineRetention + TimeSpan.FromSeconds(1));
        _registry.SweepOffline();
        var third = Add("agent-1", "alice")!;
        Assert.NotSame(first.Agent, third.Agent);
    }

    [Fact]
    public void OnlineAgentIdCannotBeTakenByAnotherUserButAnOfflineOneStartsAfresh()
    {
        var alice = Add("agent-1", "alice")!;
        Assert.False(_registry.CanRegister("agent-1", "mallory"));
        Assert.Null(Add("agent-1", "mallory"));

        _registry.Remove(alice);
        var bob = Add("agent-1", "bob")!;
        Assert.NotSame(alice.Agent, bob.Agent);
        Assert.Equal("bob", _registry.FindOnline("agent-1")!.UserId);
    }

    /// <summary>
    /// Registers a tunnel over a real loopback WebSocket. Rbs.Tests compiles Shared/ itself (its copy of
    /// WebSocketTunnelStream wins in this assembly), so the gateway's own copy is made and passed by reflection.
    /// </summary>
    private GatewayTunnel? Add(string agentId, string userId)
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var client = new TcpClient();
        client.Connect((IPEndPoint)listener.LocalEndpoint);
        var server = listener.AcceptTcpClient();
        _sockets.Add(client);
        _sockets.Add(server);
        var webSocket = WebSocket.CreateFromStream(server.GetStream(), new WebSocketCreationOptions { IsServer = true });
        var streamType = typeof(AgentTunnelRegistry).Assembly.GetType("Rbs.Shared.Tunnel.WebSocketTunnelStream", throwOnError: true)!;
        var stream = Activator.CreateInstance(streamType, webSocket);
        var add = typeof(AgentTunnelRegistry).GetMethod(nameof(AgentTunnelRegistry.Add), [typeof(string), typeof(string), streamType])!;
        return (GatewayTunnel?)add.Invoke(_registry, [agentId, userId, stream]);
    }
}
