using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Rbs.Shared.Tunnel;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Shared.Tunnel;

/// <summary>What <see cref="FakeRelayGateway"/> does with a relay request.</summary>
internal enum FakeRelayAnswer
{
    /// <summary>Answer 200 and splice the connection onto the target (or echo it when there is none).</summary>
    Relay,

    /// <summary>Answer 503 and close, as a gateway without a free tunnel for the route.</summary>
    Refuse,

    /// <summary>Close without a byte, as a gateway that does not know the relay.</summary>
    Close,

    /// <summary>Never answer (until the fake is disposed), as a middlebox that waits for more.</summary>
    Silent,
}

/// <summary>
/// A fake gateway public endpoint on 127.0.0.1:0, named as a fake: it speaks the real relay handshake
/// (Shared/Tunnel/RelayProtocol.cs) and hands relayed and plain connections alike to <see cref="Target"/> byte for byte
/// (a real Kestrel h2c gRPC server in the tests), or echoes them when there is none. It records what each connection
/// started with, so a test can tell a relay request from a plain HTTP/2 preface.
/// </summary>
internal sealed class FakeRelayGateway : IAsyncDisposable
{
    private static readonly byte[] s_http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray();

    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentBag<Task> _connections = [];
    private readonly ITestOutputHelper _output;
    private readonly Task _acceptLoop;

    public FakeRelayGateway(ITestOutputHelper output, IPEndPoint? target = null)
    {
        _output = output;
        Target = target;
        _listener.Start();
        _acceptLoop = AcceptLoopAsync();
    }

    public Uri Address => new($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}");

    /// <summary>Where connections go after the handshake; null: echoed back.</summary>
    public IPEndPoint? Target { get; }

    /// <summary>The answer to the next relay requests.</summary>
    public FakeRelayAnswer Answer { get; set; } = FakeRelayAnswer.Relay;

    /// <summary>Bytes sent right after the 200 line, in the same write, before anything is spliced.</summary>
    public byte[] AfterAnswer { get; set; } = [];

    /// <summary>The relay requests' fields (route, session token), in arrival order.</summary>
    public ConcurrentQueue<string[]> RelayRequests { get; } = new();

    /// <summary>Connections that began with the HTTP/2 preface (the plain fallback).</summary>
    public int PlainConnections => Volatile.Read(ref _plainConnections);

    /// <summary>Each connection's first line of bytes as ASCII, in arrival order (what the gateway saw first).</summary>
    public ConcurrentQueue<string> FirstLines { get; } = new();

    private int _plainConnections;

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Stop();
        await _acceptLoop.ContinueWith(_ => { }, TaskScheduler.Default);
        await Task.WhenAll(_connections.Select(c => c.ContinueWith(_ => { }, TaskScheduler.Default)));
        _stop.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            _connections.Add(ServeAsync(socket));
        }
    }

    private async Task ServeAsync(Socket socket)
    {
        using var owned = socket;
        await using var stream = new NetworkStream(socket, ownsSocket: false);
        try
        {
            // Byte by byte up to the first LF: nothing after it is consumed, so what follows is spliced whole.
            var first = new List<byte>();
            var one = new byte[1];
            while (first.Count < RelayProtocol.MaxLineBytes && (first.Count == 0 || first[^1] != (byte)'\n'))
            {
                if (await stream.ReadAsync(one, _stop.Token) == 0)
                {
                    return;
                }

                first.Add(one[0]);
            }

            var line = first.ToArray();
            FirstLines.Enqueue(Encoding.ASCII.GetString(line).TrimEnd());
            if (line.Length <= s_http2Preface.Length && s_http2Preface.AsSpan().StartsWith(line))
            {
                Interlocked.Increment(ref _plainConnections);
                TestLog.Write(_output, "fake gateway: a plain HTTP/2 connection");
                await SpliceAsync(stream, line);
                return;
            }

            if (!RelayProtocol.TryReadLine(new(line), RelayProtocol.ClientMagic, out var fields, out _))
            {
                return;
            }

            RelayRequests.Enqueue(fields);
            TestLog.Write(_output, $"fake gateway: relay request for route {fields[0]}; answering {Answer}");
            switch (Answer)
            {
                case FakeRelayAnswer.Close:
                    return;
                case FakeRelayAnswer.Silent:
                    await Task.Delay(Timeout.Infinite, _stop.Token);
                    return;
                case FakeRelayAnswer.Refuse:
                    await stream.WriteAsync(RelayProtocol.Reply(RelayProtocol.ClientMagic, 503, "no tunnel for the route"), _stop.Token);
                    return;
                default:
                    await stream.WriteAsync(RelayProtocol.Reply(RelayProtocol.ClientMagic, RelayProtocol.Ok, "OK").Concat(AfterAnswer).ToArray(), _stop.Token);
                    await SpliceAsync(stream, []);
                    return;
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or InvalidDataException)
        {
            TestLog.Write(_output, $"fake gateway: connection ended: {ex.Message}");
        }
    }

    /// <summary>The client's bytes (<paramref name="head"/> first) to the target and back, until either side ends.</summary>
    private async Task SpliceAsync(NetworkStream client, byte[] head)
    {
        if (Target is null)
        {
            await client.WriteAsync(head, _stop.Token);
            await client.CopyToAsync(client, _stop.Token);
            return;
        }

        using var upstream = new TcpClient { NoDelay = true };
        await upstream.ConnectAsync(Target, _stop.Token);
        var target = upstream.GetStream();
        await target.WriteAsync(head, _stop.Token);
        using var done = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        var up = client.CopyToAsync(target, done.Token);
        var down = target.CopyToAsync(client, done.Token);
        await Task.WhenAny(up, down);
        await done.CancelAsync();
        await Task.WhenAll(up, down).ContinueWith(_ => { }, TaskScheduler.Default);
    }
}
