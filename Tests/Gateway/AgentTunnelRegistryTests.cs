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
        var first = _registry.Add("agent-1", "alice", NewStream())!;
        Assert.NotNull(_registry.FindOnline("agent-1"));

        _registry.Remove(first);
        Assert.Null(_registry.FindOnline("agent-1"));

        // A quick reconnect lands on the same entry (and HTTP/2 client) that waiting requests hold.
        var second = _registry.Add("agent-1", "alice", NewStream())!;
        Assert.Same(first.Agent, second.Agent);
        _registry.Remove(second);

        _time.Advance(AgentTunnelRegistry.OfflineRetention + TimeSpan.FromSeconds(1));
        _registry.SweepOffline();
        var third = _registry.Add("agent-1", "alice", NewStream())!;
        Assert.NotSame(first.Agent, third.Agent);
    }

    [Fact]
    public void OnlineAgentIdCannotBeTakenByAnotherUserButAnOfflineOneStartsAfresh()
    {
        var alice = _registry.Add("agent-1", "alice", NewStream())!;
        Assert.False(_registry.CanRegister("agent-1", "mallory"));
        Assert.Null(_registry.Add("agent-1", "mallory", NewStream()));

        _registry.Remove(alice);
        var bob = _registry.Add("agent-1", "bob", NewStream())!;
        Assert.NotSame(alice.Agent, bob.Agent);
        Assert.Equal("bob", _registry.FindOnline("agent-1")!.UserId);
    }

    private WebSocketTunnelStream NewStream()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var client = new TcpClient();
        client.Connect((IPEndPoint)listener.LocalEndpoint);
        var server = listener.AcceptTcpClient();
        _sockets.Add(client);
        _sockets.Add(server);
        return new WebSocketTunnelStream(WebSocket.CreateFromStream(server.GetStream(), new WebSocketCreationOptions { IsServer = true }));
    }
}
