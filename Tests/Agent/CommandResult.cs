using System.Text;
using Grpc.Core;
using Rbs.V1;

namespace Rbs.Tests.Agent;

/// <summary>Everything a command sent back, in order.</summary>
internal sealed class CommandResult
{
    public CommandStarted? Started { get; private set; }

    public MemoryStream Stdout { get; } = new();

    public MemoryStream Stderr { get; } = new();

    public ExitStatus? Exit { get; private set; }

    /// <summary>Frame kinds in arrival order (to check started comes first and exit last).</summary>
    public List<ServerFrame.FrameOneofCase> Order { get; } = [];

    public string StdoutText => Encoding.UTF8.GetString(Stdout.ToArray());

    public string StderrText => Encoding.UTF8.GetString(Stderr.ToArray());

    public static async Task<CommandResult> ReadToEndAsync(
        AsyncDuplexStreamingCall<ClientFrame, ServerFrame> call,
        CancellationToken cancellationToken)
    {
        var result = new CommandResult();
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cancellationToken))
        {
            result.Add(frame);
        }

        return result;
    }

    public void Add(ServerFrame frame)
    {
        Order.Add(frame.FrameCase);
        switch (frame.FrameCase)
        {
            case ServerFrame.FrameOneofCase.Started:
                Started = frame.Started;
                break;
            case ServerFrame.FrameOneofCase.Stdout:
                frame.Stdout.WriteTo(Stdout);
                break;
            case ServerFrame.FrameOneofCase.Stderr:
                frame.Stderr.WriteTo(Stderr);
                break;
            case ServerFrame.FrameOneofCase.Exit:
                Exit = frame.Exit;
                break;
            default:
                break;
        }
    }

    /// <summary>Reads frames into <paramref name="result"/> until stdout contains <paramref name="marker"/>.</summary>
    public static async Task ReadUntilStdoutContainsAsync(
        AsyncDuplexStreamingCall<ClientFrame, ServerFrame> call,
        CommandResult result,
        string marker,
        CancellationToken cancellationToken)
    {
        while (!result.StdoutText.Contains(marker, StringComparison.Ordinal))
        {
            if (!await call.ResponseStream.MoveNext(cancellationToken))
            {
                throw new InvalidOperationException($"stream ended before stdout contained '{marker}'; stdout: {result.StdoutText}; stderr: {result.StderrText}");
            }

            result.Add(call.ResponseStream.Current);
        }
    }

    /// <summary>The pid printed by fake-bazel as "grandchild=PID".</summary>
    public int GrandchildPid()
    {
        var text = StdoutText;
        var at = text.IndexOf("grandchild=", StringComparison.Ordinal) + "grandchild=".Length;
        var end = at;
        while (end < text.Length && char.IsAsciiDigit(text[end]))
        {
            end++;
        }

        return int.Parse(text.AsSpan(at, end - at), System.Globalization.CultureInfo.InvariantCulture);
    }
}
