using System.Globalization;
using System.Net.WebSockets;
using Google.Protobuf;
using Grpc.Core;
using Rbs.Gateway.Tunnel;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Gateway;

/// <summary>
/// How the gateway admits streams onto tunnels (issue 3's 2,000-stream case): a tunnel is handed to the HTTP/2
/// client only after a live round trip with the agent; streams beyond the tunnels' capacity wait for the agent
/// to dial more instead of failing; the agent dials spares ahead of demand.
/// </summary>
[Collection(TunnelCollection.Name)]
public sealed class TunnelAdmissionTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task HalfOpenTunnelsAreNeverHandedOutAndTheStreamRunsOnALiveOne()
    {
        // Keepalive far away: only the liveness probe can tell the dead tunnels apart here.
        var gateway = await _env.StartGatewayAsync(keepAliveSeconds: 60, settings: new Dictionary<string, string?>
        {
            ["Gateway:TunnelProbeTimeout"] = "00:00:01",
        });
        var agent = await _env.StartAgentAsync("agent-ho", gateway.AgentAddress, _env.JoinToken("agent-ho"), spares: 1, keepAliveSeconds: 60);
        await agent.Status.FirstConnected.WaitAsync(TunnelTestEnvironment.Timeout);
        await TestWait.EventuallyAsync(() => gateway.Registry.FindOnline("agent-ho")?.IdleCount == 1, "the agent's spare registered", timeout: TimeSpan.FromSeconds(10));

        // Three tunnels with a valid join token whose "agent" end never answers: the WebSocket is accepted, but
        // nobody reads it (an agent whose dial had timed out, or a half-open path). They are the newest idle
        // tunnels, so the gateway tries them first.
        const int Dead = 3;
        var deadTunnels = new List<ClientWebSocket>();
        for (var i = 0; i < Dead; i++)
        {
            var ws = new ClientWebSocket();
            ws.Options.SetRequestHeader("Authorization", "Bearer " + _env.JoinToken("agent-ho"));
            ws.Options.KeepAliveInterval = Timeout.InfiniteTimeSpan;
            await ws.ConnectAsync(new Uri(gateway.AgentAddress.Replace("http://", "ws://", StringComparison.Ordinal) + TunnelEndpoints.ConnectPath), CancellationToken.None)
                .WaitAsync(TunnelTestEnvironment.Timeout);
            deadTunnels.Add(ws);
            _env.Track(new DisposeWebSocket(ws));
        }

        await TestWait.EventuallyAsync(() => gateway.Registry.FindOnline("agent-ho")?.IdleCount == 1 + Dead, "dead tunnels registered as idle", timeout: TimeSpan.FromSeconds(10));

        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-ho", _env.SessionToken("agent-ho"));
        const int Size = 1024 * 1024 + 7;
        var result = await TunnelTestEnvironment.RunBytesAsync(client, metadata, Size, seed: 11, exitCode: 3).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(Size, result.Length);
        Assert.Equal(DeterministicBytes.ExpectedSha256(Size, 11), result.Sha256);
        Assert.Equal(3, result.ExitCode);
        Assert.Equal(Dead, gateway.Logs.Count(112));
        // The dead ones are gone from the gateway; the live agent still has a spare for the next connection.
        await TestWait.EventuallyAsync(() => gateway.Registry.FindOnline("agent-ho") is { } a && a.LiveCount - a.IdleCount == 1 && a.IdleCount >= 1, "dead tunnels removed, agent spare replaced",
            timeout: TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task StreamsBeyondOneTunnelsLimitWaitForMoreTunnelsAndAllSucceedBinaryExact()
    {
        // 8 streams per tunnel and one spare at a time: 40 concurrent streams need at least 5 tunnels, dialled
        // one after the other while later streams wait for them.
        const int PerTunnel = 8;
        const int Streams = 40;
        var gateway = await _env.StartGatewayAsync();
        var agent = await _env.StartAgentAsync("agent-cap", gateway.AgentAddress, _env.JoinToken("agent-cap"), spares: 1, settings: new Dictionary<string, string?>
        {
            ["Agent:Tunnel:MaxStreamsPerTunnel"] = PerTunnel.ToString(CultureInfo.InvariantCulture),
            ["Agent:Tunnel:MaxExtraSpares"] = "0",
        });
        await gateway.WaitRegisteredAsync("agent-cap");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-cap", _env.SessionToken("agent-cap"));

        // Every stream is open (echo: started, first chunk echoed) before any of them ends.
        var calls = await Task.WhenAll(Enumerable.Range(0, Streams).Select(i => OpenEchoAsync(client, metadata, Chunk(i, 0))))
            .WaitAsync(TimeSpan.FromSeconds(60));
        output.WriteLine($"{Streams} streams open at once; tunnels claimed so far: {gateway.Logs.Count(110)}");
        Assert.True(gateway.Logs.Count(110) >= Streams / PerTunnel, $"expected >= {Streams / PerTunnel} tunnels to carry HTTP/2 connections, saw {gateway.Logs.Count(110)}");

        var results = await Task.WhenAll(calls.Select((call, i) => FinishEchoAsync(call, [Chunk(i, 1), Chunk(i, 2)])))
            .WaitAsync(TimeSpan.FromSeconds(60));
        for (var i = 0; i < Streams; i++)
        {
            Assert.Equal([.. Chunk(i, 0), .. Chunk(i, 1), .. Chunk(i, 2)], results[i].Echoed);
            Assert.Equal(0, results[i].Exit);
            calls[i].Dispose();
        }

        Assert.Equal(0, gateway.Logs.Count(112));
    }

    [Fact]
    public async Task AgentDialsAnExtraSpareWhenATunnelNearsItsStreamLimit()
    {
        const int PerTunnel = 8;
        var gateway = await _env.StartGatewayAsync();
        var agent = await _env.StartAgentAsync("agent-pre", gateway.AgentAddress, _env.JoinToken("agent-pre"), spares: 1, settings: new Dictionary<string, string?>
        {
            ["Agent:Tunnel:MaxStreamsPerTunnel"] = PerTunnel.ToString(CultureInfo.InvariantCulture),
            ["Agent:Tunnel:MaxExtraSpares"] = "2",
        });
        await gateway.WaitRegisteredAsync("agent-pre");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-pre", _env.SessionToken("agent-pre"));

        // 6 = 3/4 of 8 streams on the one tunnel in use: the agent dials an extra spare on top of the regular one.
        var calls = await Task.WhenAll(Enumerable.Range(0, 6).Select(i => OpenEchoAsync(client, metadata, Chunk(i, 0))))
            .WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(1, gateway.Logs.Count(110));
        await TestWait.EventuallyAsync(() => agent.Logs.Count(304) == 1, "agent noticed the busy tunnel", timeout: TimeSpan.FromSeconds(10));
        await TestWait.EventuallyAsync(() => gateway.Registry.FindOnline("agent-pre")?.IdleCount == 2,
            "two idle tunnels: the replacement spare and the extra one", timeout: TimeSpan.FromSeconds(10));

        var results = await Task.WhenAll(calls.Select((call, i) => FinishEchoAsync(call, []))).WaitAsync(TimeSpan.FromSeconds(30));
        for (var i = 0; i < calls.Length; i++)
        {
            Assert.Equal(Chunk(i, 0), results[i].Echoed);
            calls[i].Dispose();
        }
    }

    /// <summary>Deterministic, distinct bytes for stream <paramref name="stream"/>, chunk <paramref name="n"/>.</summary>
    private static byte[] Chunk(int stream, int n)
    {
        var bytes = new byte[10_000 + (stream * 31) + n];
        new DeterministicBytes((stream * 1000) + n).Fill(bytes);
        return bytes;
    }

    private static async Task<AsyncDuplexStreamingCall<ClientFrame, ServerFrame>> OpenEchoAsync(V1.Agent.AgentClient client, Metadata metadata, byte[] first)
    {
        var call = client.ExecuteCommand(metadata);
        await call.RequestStream.WriteAsync(TunnelTestEnvironment.Start("echo"));
        Assert.True(await call.ResponseStream.MoveNext());
        Assert.Equal(ServerFrame.FrameOneofCase.Started, call.ResponseStream.Current.FrameCase);
        await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFrom(first) });
        Assert.True(await call.ResponseStream.MoveNext());
        Assert.Equal(first, call.ResponseStream.Current.Stdout.ToByteArray());
        return call;
    }

    private static async Task<(byte[] Echoed, int? Exit)> FinishEchoAsync(AsyncDuplexStreamingCall<ClientFrame, ServerFrame> call, byte[][] more)
    {
        var echoed = new List<byte>(call.ResponseStream.Current.Stdout.ToByteArray());
        foreach (var chunk in more)
        {
            await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFrom(chunk) });
        }

        await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() });
        await call.RequestStream.CompleteAsync();
        int? exit = null;
        while (await call.ResponseStream.MoveNext())
        {
            var frame = call.ResponseStream.Current;
            if (frame.FrameCase == ServerFrame.FrameOneofCase.Stdout)
            {
                echoed.AddRange(frame.Stdout.ToByteArray());
            }
            else if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
            {
                exit = frame.Exit.Code;
            }
        }

        return ([.. echoed], exit);
    }

    private sealed class DisposeWebSocket(WebSocket webSocket) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            webSocket.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
