using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Rbs.Shared.Hosting;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Shared.Hosting;

/// <summary>
/// One of the three servers (rbs-orchestrator, rbs-agent, rbs-gateway) as a real process from the test output
/// directory: its stdout and stderr lines are kept (and logged), the test host's own RBS settings never leak in.
/// </summary>
public sealed class ServerProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly ITestOutputHelper _output;
    private readonly string _name;
    private readonly List<string> _stdout = [];
    private readonly List<string> _stderr = [];

    private ServerProcess(Process process, ITestOutputHelper output, string name)
    {
        _process = process;
        _output = output;
        _name = name;
    }

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    public IReadOnlyList<string> StdoutLines
    {
        get
        {
            lock (_stdout)
            {
                return [.. _stdout];
            }
        }
    }

    public IReadOnlyList<string> StderrLines
    {
        get
        {
            lock (_stderr)
            {
                return [.. _stderr];
            }
        }
    }

    /// <summary>Starts <paramref name="executable"/>; <paramref name="environment"/> adds (or, with null, removes) variables.</summary>
    public static ServerProcess Start(ITestOutputHelper output, string executable, IEnumerable<string> args, IReadOnlyDictionary<string, string?>? environment = null)
    {
        var info = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, executable))
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var name in info.Environment.Keys.Where(IsRbsSetting).ToList())
        {
            info.Environment.Remove(name);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string?>())
        {
            if (value is null)
            {
                info.Environment.Remove(name);
            }
            else
            {
                info.Environment[name] = value;
            }
        }

        TestLog.Write(output, $"$ {executable} {string.Join(' ', info.ArgumentList)}");
        var process = Process.Start(info) ?? throw new InvalidOperationException($"{executable} did not start");
        var server = new ServerProcess(process, output, executable);
        process.OutputDataReceived += (_, e) => server.Keep(server._stdout, e.Data, "");
        process.ErrorDataReceived += (_, e) => server.Keep(server._stderr, e.Data, " (stderr)");
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        process.StandardInput.Close();
        return server;
    }

    /// <summary>Waits for the exit and the last output line; fails (with what it printed) after <paramref name="timeout"/>.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"{_name} (pid {Pid}) did not exit within {timeout}");
        }

        return _process.ExitCode;
    }

    /// <summary>Reads the server's ready file (<see cref="ReadyFile"/>) once it wrote it; fails at once if the server exited first.</summary>
    internal async Task<T> ReadyFileAsync<T>(string path, TimeSpan timeout)
        where T : class, IReadyFileContents
    {
        using var cts = new CancellationTokenSource(timeout);
        while (true)
        {
            if (await ReadyFile.TryReadAsync<T>(path, cts.Token) is { } ready)
            {
                return ready;
            }

            if (_process.HasExited)
            {
                throw new InvalidOperationException($"{_name} exited ({_process.ExitCode}) before writing {path}: {string.Join(" | ", StderrLines)}");
            }

            await Task.Delay(25, cts.Token);
        }
    }

    /// <summary>The resident set size of <paramref name="pid"/> in KiB (VmRSS from /proc).</summary>
    public static long RssKib(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
            }
        }

        throw new InvalidOperationException($"no VmRSS for pid {pid}");
    }

    /// <summary>A loopback port nothing listens on (bound, noted, released).</summary>
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    public void Kill()
    {
        try
        {
            _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            Kill();
            try
            {
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }
            catch (TimeoutException)
            {
                TestLog.Write(_output, $"{_name} (pid {Pid}) did not stop after SIGKILL");
            }
        }

        _process.Dispose();
    }

    private static bool IsRbsSetting(string name) =>
        name.StartsWith("Orchestrator__", StringComparison.Ordinal) || name.StartsWith("Gateway__", StringComparison.Ordinal)
        || name.StartsWith("Agent__", StringComparison.Ordinal) || name.StartsWith("RBS_", StringComparison.Ordinal);

    private void Keep(List<string> lines, string? line, string suffix)
    {
        if (line is null)
        {
            return;
        }

        lock (lines)
        {
            lines.Add(line);
        }

        try
        {
            TestLog.Write(_output, $"[{_name}{suffix}] {line}");
        }
        catch (InvalidOperationException)
        {
            // The test that owned the output has finished.
        }
    }
}
