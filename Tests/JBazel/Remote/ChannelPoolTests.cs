using System.Net;
using Grpc.Core;
using Rbs.JBazel.Commands;
using Rbs.JBazel.Configuration;
using Rbs.JBazel.Remote;
using Rbs.JBazel.Terminal;
using Rbs.Tests.Shared.Tunnel;
using Rbs.V1;

namespace Rbs.Tests.JBazel.Remote;

/// <summary>
/// Which channel an agent call gets: in tunnel mode a relayed one (the gateway splices the connection onto the agent's
/// own server), which still works against a gateway that does not relay; otherwise the plain one, as before.
/// </summary>
public sealed class ChannelPoolTests(ITestOutputHelper output) : IDisposable
{
    private const string Token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC0xIn0.c2lnbmF0dXJlLW9mLWEtdGVzdC10b2tlbg";

    private readonly TempWorkspace _workspace = new();

    public void Dispose() => _workspace.Dispose();

    [Fact]
    public async Task TunnelModeAgentCallsGoOverTheRelayWithTheRouteAndSessionToken()
    {
        await using var agent = await StartAgentAsync();
        await using var gateway = new FakeRelayGateway(output, new IPEndPoint(IPAddress.Loopback, agent.Address.Port));
        using var channels = new ChannelPool();
        var allocation = Tunnel(gateway.Address, "route-relayed");

        var status = await new V1.Agent.AgentClient(channels.ForAgent(allocation))
            .GetStatusAsync(new GetStatusRequest(), allocation.Headers, deadline: DateTime.UtcNow.AddSeconds(30));

        Assert.Equal(FakeRemote.AgentId, status.AgentId);
        Assert.Equal(["route-relayed", Token], Assert.Single(gateway.RelayRequests));
        Assert.Equal(0, gateway.PlainConnections);
        // The orchestrator's calls to the same gateway keep their own plain channel.
        Assert.NotSame(channels.Get(gateway.Address), channels.ForAgent(allocation));
        Assert.Same(channels.ForAgent(allocation), channels.ForAgent(allocation));
    }

    [Fact]
    public async Task AGatewayWithoutTheRelayStillServesTunnelModeCalls()
    {
        // An h2c server that knows nothing of the relay, as an older gateway: it reads the request line as a broken
        // HTTP/2 preface and closes, and the call goes over a plain connection.
        await using var agent = await StartAgentAsync();
        using var channels = new ChannelPool();
        var allocation = Tunnel(agent.Address, "route-old-gateway");

        var status = await new V1.Agent.AgentClient(channels.ForAgent(allocation))
            .GetStatusAsync(new GetStatusRequest(), allocation.Headers, deadline: DateTime.UtcNow.AddSeconds(30));

        Assert.Equal(FakeRemote.AgentId, status.AgentId);
    }

    [Fact]
    public void DirectModeRelayOffAndAGatewayBehindAProxyUseThePlainChannel()
    {
        var address = new Uri("http://127.0.0.1:1");
        using var channels = new ChannelPool();
        var direct = new Allocation(new GetServerResponse { AgentId = "a", Address = address.ToString(), ConnectMode = ConnectMode.Direct, SessionToken = Token }, address, [], 0);
        Assert.Same(channels.Get(address), channels.ForAgent(direct));

        using var relayOff = new ChannelPool(relay: false);
        Assert.Same(relayOff.Get(address), relayOff.ForAgent(Tunnel(address, "route-1")));

        // GetServer said the gateway sits behind an HTTP/2-terminating proxy: no relay request.
        Assert.Same(channels.Get(address), channels.ForAgent(Tunnel(address, "route-2", relay: false)));
    }

    [Fact]
    public void TheRelaySwitchIsOnByDefaultAndRbsRelay0TurnsItOff()
    {
        Assert.True(Resolve([], []).Relay);
        Assert.False(Resolve([], new() { ["RBS_RELAY"] = "0" }).Relay);
        Assert.False(Resolve(["--rbs_relay=false"], []).Relay);
        Assert.Contains("--rbs_relay=true|false", BazelCommand.HelpText(), StringComparison.Ordinal);
    }

    private static Allocation Tunnel(Uri gateway, string route, bool relay = true)
    {
        var response = new GetServerResponse
        {
            AgentId = FakeRemote.AgentId,
            Address = gateway.ToString().TrimEnd('/'),
            ConnectMode = ConnectMode.Tunnel,
            Route = route,
            SessionToken = Token,
            Relay = relay,
        };
        return new Allocation(response, gateway, new Metadata { { "rbs-agent-route", route }, { "authorization", $"Bearer {Token}" } }, 0);
    }

    private async Task<FakeRemote> StartAgentAsync()
    {
        var agent = await FakeRemote.StartAsync(output);
        agent.StatusAgentId = FakeRemote.AgentId;
        return agent;
    }

    private RbsSettings Resolve(string[] commandLine, Dictionary<string, string> variables)
    {
        var command = new BazelCommand(
            new CliEnvironment(variables, _workspace.Root, _workspace.Home, "test-host"),
            new StandardStreams(Stream.Null, Stream.Null, Stream.Null));
        var parse = command.ParseTokens(commandLine);
        Assert.Empty(parse.Errors);
        return command.ResolveSettings(parse, _workspace.Root);
    }
}
