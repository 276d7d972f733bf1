using System.Buffers;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Win32.SafeHandles;
using Rbs.V1;
using Rbs.Shared.Text;

namespace Rbs.Agent.Outputs;

/// <summary>The rbs.v1.Outputs gRPC service: lists and serves the recorded top-level outputs of recent builds.</summary>
internal sealed partial class OutputsService(OutputStore store, Sync.SyncMetrics metrics, ILogger<OutputsService> logger) : V1.Outputs.OutputsBase
{
    /// <summary>The most ranges one ReadOutputs call may ask for.</summary>
    public const int MaxRanges = 100_000;

    public override Task<ListOutputsResponse> ListOutputs(ListOutputsRequest request, ServerCallContext context)
    {
        var invocation = Find(request.InvocationId);
        var response = new ListOutputsResponse { BlockSize = OutputRecord.BlockSize };
        foreach (var file in invocation.Files!)
        {
            var listed = new OutputFile
            {
                Path = file.RelativePath,
                Size = (ulong)file.Size,
                Digest = ByteString.CopyFrom(file.Digest),
                Executable = file.Executable,
            };
            listed.BlockDigests.AddRange(file.BlockDigests.Select(ByteString.CopyFrom));
            response.Files.Add(listed);
        }

        response.TestLabels.Add(invocation.TestLabels);

        return Task.FromResult(response);
    }

    public override async Task ReadOutputs(ReadOutputsRequest request, IServerStreamWriter<OutputChunk> responseStream, ServerCallContext context)
    {
        var invocation = Find(request.InvocationId);
        if (request.Ranges.Count > MaxRanges)
        {
            throw Reject(StatusCode.InvalidArgument, $"{request.Ranges.Count} ranges in one call; ask for at most {MaxRanges} per call.");
        }

        // Everything is checked before the first byte goes out, so a bad request never yields a partial answer.
        var plan = new List<(OutputRange Range, OutputRecord File)>(request.Ranges.Count);
        foreach (var range in request.Ranges)
        {
            var file = invocation.Find(range.Path)
                ?? throw Reject(StatusCode.InvalidArgument, $"'{UntrustedText.Echo(range.Path)}' is not an output of invocation {UntrustedText.Echo(request.InvocationId)}; only listed outputs can be read.");
            if (range.Offset > (ulong)file.Size || range.Length > (ulong)file.Size - range.Offset)
            {
                throw Reject(StatusCode.InvalidArgument,
                    $"range {range.Offset}+{range.Length} is past the end of '{UntrustedText.Echo(range.Path)}' ({file.Size} bytes).");
            }

            plan.Add((range, file));
        }

        var buffer = ArrayPool<byte>.Shared.Rent(OutputRecord.BlockSize);
        SafeFileHandle? handle = null;
        OutputRecord? open = null;
        long sent = 0;
        try
        {
            foreach (var (range, file) in plan)
            {
                if (!ReferenceEquals(open, file))
                {
                    handle?.Dispose();
                    handle = null;
                    handle = Open(file);
                    open = file;
                }

                var offset = (long)range.Offset;
                var end = offset + (long)range.Length;
                while (offset < end)
                {
                    var length = (int)Math.Min(OutputRecord.BlockSize, end - offset);
                    var read = RandomAccess.Read(handle!, buffer.AsSpan(0, length), offset);
                    if (read == 0)
                    {
                        throw Rebuilt(file);
                    }

                    await responseStream.WriteAsync(
                        new OutputChunk { Path = file.RelativePath, Offset = (ulong)offset, Data = ByteString.CopyFrom(buffer, 0, read) },
                        context.CancellationToken);
                    offset += read;
                    sent += read;
                }

                // Rewritten in place while it was read: what went out may mix two versions.
                if (!file.Matches(handle!))
                {
                    throw Rebuilt(file);
                }
            }
        }
        finally
        {
            handle?.Dispose();
            ArrayPool<byte>.Shared.Return(buffer);
            // What reached the stream, also of a fetch cut short.
            metrics.OutputsServed(sent);
        }

        Log.Served(logger, UntrustedText.Echo(request.InvocationId), plan.Count, sent);
    }

    private InvocationOutputs Find(string invocationId)
    {
        var invocation = store.Find(invocationId)
            ?? throw Reject(StatusCode.NotFound,
                $"no outputs recorded for invocation '{UntrustedText.Echo(invocationId)}': it was not a build run with collect_outputs, or it is older than the agent's last {OutputStore.MaxInvocations} invocations.");
        if (invocation.Files is null)
        {
            throw Reject(StatusCode.NotFound, $"no outputs recorded for invocation '{UntrustedText.Echo(invocationId)}': {invocation.Note}.");
        }

        return invocation;
    }

    private SafeFileHandle Open(OutputRecord file)
    {
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(file.LocalPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            throw Rebuilt(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw Reject(StatusCode.Internal, $"the agent cannot read '{file.RelativePath}': {ex.Message}");
        }

        if (!file.Matches(handle))
        {
            handle.Dispose();
            throw Rebuilt(file);
        }

        return handle;
    }

    private RpcException Rebuilt(OutputRecord file) =>
        Reject(StatusCode.Aborted, $"'{file.RelativePath}' was rebuilt since listed; retry (list the outputs again).");

    private RpcException Reject(StatusCode code, string message)
    {
        Log.Rejected(logger, code, message);
        return new RpcException(new Status(code, message));
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 410, Level = LogLevel.Debug, Message = "Invocation {InvocationId}: served {Ranges} ranges, {Bytes} bytes")]
        public static partial void Served(ILogger logger, string invocationId, int ranges, long bytes);

        [LoggerMessage(EventId = 411, Level = LogLevel.Information, Message = "Outputs call rejected: {StatusCode}: {Message}")]
        public static partial void Rejected(ILogger logger, StatusCode statusCode, string message);
    }
}
