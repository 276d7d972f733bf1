using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Rbs.V1;

namespace Rbs.Tests.Gateway;

/// <summary>
/// A stand-in for the real agent, served by Kestrel over the tunnel listener, so the tunnel is exercised
/// with real gRPC. "Commands" (StartCommand.args): <c>bytes N SEED [EXIT]</c> streams N deterministic bytes
/// to stdout; <c>zeros N</c> streams N zero bytes in 64 KiB frames (throughput: no generator cost);
/// <c>echo</c> echoes stdin until EOF; <c>forever</c> streams 4 KiB every 20 ms until cancelled.
/// </summary>
internal sealed class StandInAgentService(string agentId) : V1.Agent.AgentBase
{
    public const int ChunkSize = 32 * 1024;

    public override async Task ExecuteCommand(IAsyncStreamReader<ClientFrame> requestStream, IServerStreamWriter<ServerFrame> responseStream, ServerCallContext context)
    {
        var ct = context.CancellationToken;
        if (!await requestStream.MoveNext(ct) || requestStream.Current.FrameCase != ClientFrame.FrameOneofCase.Start)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "the first frame must be start"));
        }

        var args = requestStream.Current.Start.Args;
        await responseStream.WriteAsync(new ServerFrame { Started = new CommandStarted { AgentId = agentId, Pid = Environment.ProcessId, InvocationId = requestStream.Current.Start.InvocationId } }, ct);
        var exitCode = 0;
        switch (args[0])
        {
            case "bytes":
                {
                    var remaining = long.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
                    var generator = new DeterministicBytes(int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture));
                    exitCode = args.Count > 3 ? int.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 0;
                    var buffer = new byte[ChunkSize];
                    while (remaining > 0)
                    {
                        var n = (int)Math.Min(buffer.Length, remaining);
                        generator.Fill(buffer.AsSpan(0, n));
                        await responseStream.WriteAsync(new ServerFrame { Stdout = ByteString.CopyFrom(buffer, 0, n) }, ct);
                        remaining -= n;
                    }

                    break;
                }

            case "zeros":
                {
                    var remaining = long.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
                    var zeros = ByteString.CopyFrom(new byte[64 * 1024]);
                    while (remaining >= zeros.Length)
                    {
                        await responseStream.WriteAsync(new ServerFrame { Stdout = zeros }, ct);
                        remaining -= zeros.Length;
                    }

                    if (remaining > 0)
                    {
                        await responseStream.WriteAsync(new ServerFrame { Stdout = ByteString.CopyFrom(new byte[remaining]) }, ct);
                    }

                    break;
                }

            case "echo":
                while (await requestStream.MoveNext(ct))
                {
                    var frame = requestStream.Current;
                    if (frame.FrameCase == ClientFrame.FrameOneofCase.Stdin)
                    {
                        await responseStream.WriteAsync(new ServerFrame { Stdout = frame.Stdin }, ct);
                    }
                    else if (frame.FrameCase == ClientFrame.FrameOneofCase.StdinEof)
                    {
                        break;
                    }
                }

                break;

            case "forever":
                var chunk = ByteString.CopyFrom(new byte[4096]);
                while (true)
                {
                    await responseStream.WriteAsync(new ServerFrame { Stdout = chunk }, ct);
                    await Task.Delay(20, ct);
                }

            default:
                throw new RpcException(new Status(StatusCode.InvalidArgument, $"unknown stand-in command {args[0]}"));
        }

        await responseStream.WriteAsync(new ServerFrame { Exit = new ExitStatus { Code = exitCode } }, ct);
    }

    public override Task<AgentStatus> GetStatus(GetStatusRequest request, ServerCallContext context) =>
        Task.FromResult(new AgentStatus { AgentId = agentId, Pid = Environment.ProcessId, WorkspacePath = "/stand-in" });
}

/// <summary>Cheap reproducible bytes (xorshift), so both ends can compute the expected SHA-256.</summary>
internal sealed class DeterministicBytes(int seed)
{
    private ulong _state = (ulong)seed * 0x9E3779B97F4A7C15UL + 1;

    public void Fill(Span<byte> destination)
    {
        for (var i = 0; i < destination.Length; i++)
        {
            _state ^= _state << 13;
            _state ^= _state >> 7;
            _state ^= _state << 17;
            destination[i] = (byte)_state;
        }
    }

    public static byte[] ExpectedSha256(long length, int seed)
    {
        var generator = new DeterministicBytes(seed);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[StandInAgentService.ChunkSize];
        while (length > 0)
        {
            var n = (int)Math.Min(buffer.Length, length);
            generator.Fill(buffer.AsSpan(0, n));
            hash.AppendData(buffer, 0, n);
            length -= n;
        }

        return hash.GetHashAndReset();
    }
}
