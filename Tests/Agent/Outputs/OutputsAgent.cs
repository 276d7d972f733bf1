using Rbs.V1;

namespace Rbs.Tests.Agent.Outputs;

/// <summary>
/// A real agent (<see cref="TestAgent"/>: AgentHost on Kestrel 127.0.0.1:0) whose build tool is Assets/outputs-bazel.sh,
/// which reports every file below <c>execroot/ws/bazel-out/*/bin/</c> of the agent's workspace as a top-level output.
/// </summary>
internal sealed class OutputsAgent : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private OutputsAgent(TestAgent agent)
    {
        Agent = agent;
        Outputs = new Rbs.V1.Outputs.OutputsClient(agent.Channel);
    }

    public TestAgent Agent { get; }

    public Rbs.V1.Outputs.OutputsClient Outputs { get; }

    /// <summary>The agent's execroot as the fake bazel lays it out.</summary>
    public string ExecRoot => Path.Combine(Agent.Workspace, "execroot", "ws");

    public static string ToolPath { get; } = MakeExecutable(Path.Combine(AppContext.BaseDirectory, "Agent", "Outputs", "Assets", "outputs-bazel.sh"));

    public static async Task<OutputsAgent> StartAsync(ITestOutputHelper output) =>
        new(await TestAgent.StartAsync(output, "--build-tool", ToolPath));

    /// <summary>Writes an output as the next build will report it; <paramref name="path"/> is execroot-relative.</summary>
    public string WriteOutput(string path, byte[] content, bool executable = false)
    {
        var full = Path.Combine(ExecRoot, path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        File.WriteAllBytes(full, content);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(full, executable
                ? UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute
                : UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead);
        }

        return full;
    }

    /// <summary>Runs <c>build //...</c> (or <paramref name="args"/>) with collect_outputs and returns its invocation id.</summary>
    public async Task<string> BuildAsync(int expectedExitCode = 0, params string[] args)
    {
        var invocationId = Guid.NewGuid().ToString();
        var start = new StartCommand { InvocationId = invocationId, CollectOutputs = true };
        start.Args.AddRange(args.Length > 0 ? args : ["build", "//..."]);
        var result = await Agent.RunAsync(start, Timeout);
        Assert.True(expectedExitCode == result.Exit?.Code, $"exit {result.Exit}; stderr: {result.StderrText}");
        return invocationId;
    }

    /// <summary>The arguments the build tool last received.</summary>
    public string[] LastArgs() => File.ReadAllLines(Path.Combine(Agent.Workspace, "args.txt"));

    public ValueTask DisposeAsync() => Agent.DisposeAsync();

    private static string MakeExecutable(string path)
    {
        if (OperatingSystem.IsWindows())
        {
            return path;
        }

        File.SetUnixFileMode(path, File.GetUnixFileMode(path) | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        return path;
    }
}
