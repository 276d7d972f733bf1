using System.Diagnostics;
using Grpc.Core;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Gateway;

[Collection(TunnelCollection.Name)]
public sealed class TunnelLoadTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task TwoHundredConcurrentStreamsOverOneAgentAreBinaryExact()
    {
        const int Streams = 200;
        const int Size = 256 * 1024;
        var gateway = await _env.StartGatewayAsync();
        // 100 streams per tunnel (Kestrel's default; the agent's default is higher): 200 streams need two tunnels.
        var agent = await _env.StartAgentAsync("agent-load", gateway.AgentAddress, _env.JoinToken("agent-load"), settings: new Dictionary<string, string?>
        {
            ["Agent:Tunnel:MaxStreamsPerTunnel"] = "100",
        });
        await gateway.WaitRegisteredAsync("agent-load");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-load", _env.SessionToken("agent-load"));
        var expected = Enumerable.Range(0, Streams).Select(i => DeterministicBytes.ExpectedSha256(Size + i, i)).ToArray();

        var stopwatch = Stopwatch.StartNew();
        var results = await Task.WhenAll(Enumerable.Range(0, Streams).Select(i =>
            TunnelTestEnvironment.RunBytesAsync(client, metadata, Size + i, seed: i, exitCode: i % 7)))
            .WaitAsync(TimeSpan.FromSeconds(90));
        output.WriteLine($"{Streams} streams x {Size / 1024} KiB in {stopwatch.ElapsedMilliseconds} ms; agent tunnels open now: {agent.Status.OpenTunnels}");

        for (var i = 0; i < Streams; i++)
        {
            Assert.Equal(Size + i, results[i].Length);
            Assert.Equal(expected[i], results[i].Sha256);
            Assert.Equal(i % 7, results[i].ExitCode);
        }

        // More than 100 concurrent streams need a second inner HTTP/2 connection, i.e. a second tunnel;
        // the agent kept replacing spares, so it is still online with idle tunnels for the next client.
        await TestWait.EventuallyAsync(() => gateway.Registry.FindOnline("agent-load")?.IdleCount >= 2, "spare tunnels replenished", timeout: TimeSpan.FromSeconds(10));
        Assert.True(gateway.Logs.Count(110) >= 2, "expected at least two tunnels to carry HTTP/2 connections");
    }

    [Fact]
    public async Task SlowReaderDoesNotStallOtherStreamsOnTheSameAgent()
    {
        var gateway = await _env.StartGatewayAsync();
        var agent = await _env.StartAgentAsync("agent-slow", gateway.AgentAddress, _env.JoinToken("agent-slow"));
        await gateway.WaitRegisteredAsync("agent-slow");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-slow", _env.SessionToken("agent-slow"));

        // The slow client asks for far more than every flow-control window on the path can hold, then stops reading.
        const long SlowSize = 24L * 1024 * 1024;
        using var slow = client.ExecuteCommand(metadata);
        await slow.RequestStream.WriteAsync(TunnelTestEnvironment.Start("bytes", SlowSize.ToString(System.Globalization.CultureInfo.InvariantCulture), "99"));
        Assert.True(await slow.ResponseStream.MoveNext().WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(ServerFrame.FrameOneofCase.Started, slow.ResponseStream.Current.FrameCase);

        // Meanwhile other clients' streams on the same agent (same tunnel connection) complete.
        var stopwatch = Stopwatch.StartNew();
        var others = await Task.WhenAll(Enumerable.Range(0, 10).Select(i =>
            TunnelTestEnvironment.RunBytesAsync(client, metadata, 512 * 1024, seed: i)))
            .WaitAsync(TimeSpan.FromSeconds(30));
        output.WriteLine($"10 other streams completed in {stopwatch.ElapsedMilliseconds} ms while the slow reader read nothing");
        for (var i = 0; i < others.Length; i++)
        {
            Assert.Equal(DeterministicBytes.ExpectedSha256(512 * 1024, i), others[i].Sha256);
        }

        // The slow reader then drains its stream intact: backpressure lost nothing.
        using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        long received = 0;
        int? exit = null;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await foreach (var frame in slow.ResponseStream.ReadAllAsync(cts.Token))
        {
            if (frame.FrameCase == ServerFrame.FrameOneofCase.Stdout)
            {
                hash.AppendData(frame.Stdout.Span);
                received += frame.Stdout.Length;
            }
            else if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
            {
                exit = frame.Exit.Code;
            }
        }

        Assert.Equal(SlowSize, received);
        Assert.Equal(DeterministicBytes.ExpectedSha256(SlowSize, 99), hash.GetHashAndReset());
        Assert.Equal(0, exit);
    }
}

[Collection(TunnelCollection.Name)]
public sealed class MultiAgentRoutingTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task EachStreamReachesExactlyTheAgentItsRouteNames()
    {
        const int Agents = 5;
        var gateway = await _env.StartGatewayAsync();
        var agents = await Task.WhenAll(Enumerable.Range(0, Agents).Select(i =>
            _env.StartAgentAsync($"agent-{i}", gateway.AgentAddress, _env.JoinToken($"agent-{i}", $"user-{i}"), spares: 1)));
        await TestWait.EventuallyAsync(() => Enumerable.Range(0, Agents).All(i => gateway.IsOnline($"agent-{i}")), "all agents registered", timeout: TimeSpan.FromSeconds(15));
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));

        var calls = Enumerable.Range(0, Agents * 8).Select(async n =>
        {
            var i = n % Agents;
            using var call = client.ExecuteCommand(TunnelTestEnvironment.Route($"agent-{i}", _env.SessionToken($"agent-{i}", $"user-{i}")));
            await call.RequestStream.WriteAsync(TunnelTestEnvironment.Start("bytes", "1000", n.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            Assert.True(await call.ResponseStream.MoveNext());
            var servedBy = call.ResponseStream.Current.Started.AgentId;
            while (await call.ResponseStream.MoveNext())
            {
            }

            return (Expected: $"agent-{i}", ServedBy: servedBy);
        });
        var results = await Task.WhenAll(calls).WaitAsync(TimeSpan.FromSeconds(60));

        Assert.All(results, r => Assert.Equal(r.Expected, r.ServedBy));
        var snapshot = gateway.Registry.Snapshot();
        Assert.Equal(Agents, snapshot.Count);
        Assert.All(snapshot, s => Assert.Equal("user-" + s.AgentId["agent-".Length..], s.UserId));

        // One agent leaving does not disturb the others.
        await agents[0].StopAsync();
        await TestWait.EventuallyAsync(() => !gateway.IsOnline("agent-0"), "agent-0 offline", timeout: TimeSpan.FromSeconds(15));
        var status = await client.GetStatusAsync(new GetStatusRequest(), TunnelTestEnvironment.Route("agent-1", _env.SessionToken("agent-1", "user-1")))
            .ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal("agent-1", status.AgentId);
    }
}
